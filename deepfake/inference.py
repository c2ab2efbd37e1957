"""Batched prediction, shared by training, evaluation and the ensemble."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import nn

from .data import to_tensor
from .errors import ConfigError


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def to_float(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 NCHW -> float [0, 1] on the device, the only input form the models take."""
    return batch.to(device, non_blocking=True).float().div_(255)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The deterministic model (no dropout, no BatchNorm stat updates), then every module's own mode back: restoring
    only the top module's would switch a wrapper's eval-mode members (an ensemble's) into training."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.train(training)


def as_nchw_uint8(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    return images if isinstance(images, torch.Tensor) else to_tensor(images)


@torch.no_grad()
def predict_fake_proba(
    model: torch.nn.Module,
    images: np.ndarray | torch.Tensor,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    tta_flip: bool = False,
) -> np.ndarray:
    """Probability of class 1 (fake) per image; images are uint8 NHWC arrays or uint8 NCHW tensors."""
    device = torch.device(device)
    probs = []
    with eval_mode(model):
        for batch in as_nchw_uint8(images).split(batch_size):
            probs.append(fake_proba(model, to_float(batch, device), tta_flip).cpu())
    return torch.cat(probs).numpy() if probs else np.zeros(0, dtype=np.float32)


def fake_proba(model: torch.nn.Module, images: torch.Tensor, tta_flip: bool = False) -> torch.Tensor:
    """Softmax fake probability for float images; with tta_flip, averaged with the mirrored image."""
    probs = model(images).softmax(1)[:, 1]
    if tta_flip:
        probs = (probs + model(images.flip(3)).softmax(1)[:, 1]) / 2
    return probs


@torch.no_grad()
def count_correct(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> int:
    """Images called by their label at the 0.5 threshold the submission uses (the caller sets eval mode)."""
    return int(((fake_proba(model, images) >= 0.5).long() == labels.to(images.device)).sum())
