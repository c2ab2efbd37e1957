"""A seeded demo data set, so the project runs on a fresh machine with no data and no network.

Real images are 32x32 crops of photographs that ship inside required packages (scikit-learn's
and matplotlib's sample images). Fake images are crops of the same photographs re-synthesised
the way generator decoders leave traces: down-sampled 2x, then up-sampled by zero insertion and
a fixed kernel whose taps don't sum evenly (a transposed convolution), which leaves a
checkerboard, spectral peaks at the Nyquist frequency and over-smoothed texture, plus a slight
colour cast. Content cannot give the class away, and the trace has a random strength, faint
enough on some fakes that a small CNN lands well below 100% (about 83-91% validation accuracy).
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import cv2
import matplotlib.cbook
import numpy as np
from sklearn.datasets import load_sample_images

from .io import read_json, write_json

log = logging.getLogger(__name__)

MANIFEST = "demo_manifest.json"
VERSION = 2  # bump when the procedure changes, so older builds are rebuilt instead of reused
FAINT_SHARE = 0.2  # fakes with a near-invisible trace (strength < FAINT_MAX): caps accuracy near 90%
FAINT_MAX = 0.1
VISIBLE_STRENGTH = (0.3, 1.0)
CHECKERBOARD = 0.25  # outer-tap deficit at full strength: taps (0.5 - 0.25, 1, 0.5 - 0.25)
SMOOTHING_SIGMA = 0.8  # pixels, at full strength
COLOUR_CAST = 0.06  # per-channel gain deviation, at full strength
NOISE_SIGMA = 2.0  # grey levels of sensor-like noise on both classes


def source_photographs() -> list[np.ndarray]:
    """RGB photographs available offline: scikit-learn's two, and matplotlib's Grace Hopper if installed."""
    photos = list(load_sample_images().images)
    try:
        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
            data = np.frombuffer(handle.read(), dtype=np.uint8)
        photos.append(cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    except (OSError, ValueError):
        log.debug("matplotlib's grace_hopper.jpg is not installed; using scikit-learn's photographs only")
    return photos


def random_crop(photos: list[np.ndarray], rng: np.random.Generator, size: int) -> np.ndarray:
    """A square crop of a random photo at random position, scale (2x to ~7x the output size) and mirroring."""
    photo = photos[int(rng.integers(len(photos)))]
    side = int(np.exp(rng.uniform(np.log(2 * size), np.log(min(photo.shape[:2]) / 2))))
    top = int(rng.integers(0, photo.shape[0] - side + 1))
    left = int(rng.integers(0, photo.shape[1] - side + 1))
    crop = photo[top:top + side, left:left + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=cv2.INTER_AREA)


def trace_strength(rng: np.random.Generator) -> float:
    if rng.random() < FAINT_SHARE:
        return float(rng.uniform(0.0, FAINT_MAX))
    return float(rng.uniform(*VISIBLE_STRENGTH))


def resynthesise(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """The image re-rendered from half resolution like a generator decoder, blended in at ``strength``."""
    original = image.astype(np.float32)
    size = image.shape[0]
    sparse = np.zeros_like(original)
    sparse[::2, ::2] = cv2.resize(original, (size // 2, size // 2), interpolation=cv2.INTER_AREA)
    # Taps (0.5, 1, 0.5) would be exact bilinear interpolation; weaker outer taps darken odd rows/columns.
    outer = 0.5 - CHECKERBOARD * strength
    taps = np.array([outer, 1.0, outer], dtype=np.float32)
    upsampled = cv2.filter2D(sparse, -1, np.outer(taps, taps), borderType=cv2.BORDER_REFLECT)
    if strength > 0:
        upsampled = cv2.GaussianBlur(upsampled, (3, 3), SMOOTHING_SIGMA * strength)
    upsampled *= 1 + rng.uniform(-COLOUR_CAST, COLOUR_CAST, 3).astype(np.float32) * strength
    return (1 - strength) * original + strength * upsampled


def add_sensor_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same faint noise on both classes, so noise is no cue and fake traces are not exact."""
    noisy = image.astype(np.float32) + rng.normal(0, NOISE_SIGMA, size=image.shape)
    return np.clip(noisy.round(), 0, 255).astype(np.uint8)


def demo_image(photos: list[np.ndarray], label: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """One real (label 0) or fake (label 1) demo image."""
    image = random_crop(photos, rng, size)
    if label == 1:
        image = resynthesise(image, trace_strength(rng), rng)
    return add_sensor_noise(image, rng)


def build_demo_dataset(
    root: str | Path, per_class: int = 300, test_count: int = 100, seed: int = 42, size: int = 32,
) -> Path:
    """Write root/train/{real,fake}/N.png and root/test/N.png (a random mix); reuse an identical build.

    ``root`` belongs to this function: its train/ and test/ are replaced when the parameters change.
    The test labels are kept in the manifest, so demo predictions can be scored.
    """
    root = Path(root)
    params = {"per_class": per_class, "test_count": test_count, "seed": seed, "size": size, "version": VERSION}
    manifest_path = root / MANIFEST
    if manifest_path.exists() and {k: v for k, v in read_json(manifest_path).items() if k in params} == params:
        return root
    rng = np.random.default_rng(seed)
    photos = source_photographs()
    test_labels = rng.permutation(np.arange(test_count) % 2).tolist()
    root.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        for label, name in enumerate(("real", "fake")):
            for number in range(1, per_class + 1):
                _write_png(staging / "train" / name / f"{number}.png", demo_image(photos, label, rng, size))
        for number, label in enumerate(test_labels, start=1):
            _write_png(staging / "test" / f"{number}.png", demo_image(photos, label, rng, size))
        for part in ("train", "test"):
            shutil.rmtree(root / part, ignore_errors=True)
            (staging / part).rename(root / part)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_json(manifest_path, {**params, "test_labels": test_labels})
    log.info("built demo data in %s: %d real + %d fake training images, %d test images",
             root, per_class, per_class, test_count)
    return root


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes())
