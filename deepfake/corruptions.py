"""Everyday image-pipeline corruptions at fixed severities: robustness beyond adversarial noise.

A detector meets re-encoded, resized, noisy and re-exposed images long before it meets an
attacker. Each corruption is one albumentations transform with its parameter pinned to a single
value per severity, so "JPEG severity 3" is the same change on every run, and a benchmark can
also ask for an exact parameter (``apply_corruption(images, "jpeg", 40, seed)``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import albumentations as A
import cv2
import numpy as np

from .data import augment


@dataclass(frozen=True)
class Corruption:
    parameter: str  # what the value means, for tables and figure labels
    levels: tuple[float, float, float]  # the value at severity 1, 2, 3
    transform: Callable[[float], A.BasicTransform]  # the transform applying exactly that value


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": Corruption(
        "noise sigma ([0,1] pixels)", (0.04, 0.08, 0.12),
        lambda sigma: A.GaussNoise(std_range=(sigma, sigma), p=1.0),
    ),
    "gaussian_blur": Corruption(
        "blur sigma (pixels)", (0.5, 1.0, 1.5),
        lambda sigma: A.GaussianBlur(blur_limit=0, sigma_limit=(sigma, sigma), p=1.0),  # kernel from sigma
    ),
    "jpeg": Corruption(
        "JPEG quality", (80, 60, 40),
        lambda quality: A.ImageCompression(compression_type="jpeg", quality_range=(int(quality),) * 2, p=1.0),
    ),
    "webp": Corruption(
        "WebP quality", (80, 60, 40),
        lambda quality: A.ImageCompression(compression_type="webp", quality_range=(int(quality),) * 2, p=1.0),
    ),
    "downscale": Corruption(
        "down-scale factor", (0.75, 0.5, 0.375),  # 32 -> 24, 16, 12 pixels and back
        lambda scale: A.Downscale(
            scale_range=(scale, scale), interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR},
            p=1.0,
        ),
    ),
    "brightness_contrast": Corruption(
        "brightness +x, contrast -x", (0.1, 0.2, 0.3),  # a washed-out re-exposure
        lambda shift: A.RandomBrightnessContrast(brightness_limit=(shift,) * 2, contrast_limit=(-shift,) * 2, p=1.0),
    ),
    "salt_pepper": Corruption(
        "share of pixels flipped", (0.01, 0.03, 0.05),
        lambda amount: A.SaltAndPepper(amount=(amount, amount), p=1.0),
    ),
}
SEVERITIES = (1, 2, 3)


def severity_value(name: str, severity: int) -> float:
    """The parameter a severity stands for; one clear error for an unknown name or severity."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"corruption severity must be one of {SEVERITIES}, got {severity}")
    return CORRUPTIONS[name].levels[severity - 1]


def apply_corruption(images: np.ndarray, name: str, value: float, seed: int) -> np.ndarray:
    """``images`` (uint8 NHWC) corrupted at an explicit parameter value; deterministic for ``seed``."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    return augment(images, A.Compose([CORRUPTIONS[name].transform(value)]), seed)


def corrupt(images: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """``images`` (uint8 NHWC) corrupted at severity 1-3; same shape and dtype, deterministic for ``seed``."""
    return apply_corruption(images, name, severity_value(name, severity), seed)
