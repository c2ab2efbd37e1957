"""Finding, loading and splitting labelled images; the one image loader every stage uses.

Images are decoded once into uint8 arrays (the challenge set is 2,000 images of 32x32), split
before anything is derived from them, and the split is saved so evaluation and the ensemble
score exactly the same validation images as training did.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from sklearn.model_selection import train_test_split

from .config import AUGMENTATIONS
from .demo_data import build_demo_dataset
from .errors import DeepfakeError
from .io import read_json, write_json

log = logging.getLogger(__name__)

CLASS_NAMES = ("real", "fake")  # index = label
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
# (real folder, fake folder) relative to the data dir, matched case-insensitively, so CIFAKE's
# own train/REAL + train/FAKE is the first layout too.
LABELLED_LAYOUTS = (
    ("train/real", "train/fake"),
    ("real_cifake_images", "fake_cifake_images"),
    ("real", "fake"),
)
LAYOUT_HELP = "expected train/real + train/fake, real_cifake_images/ + fake_cifake_images/, or real/ + fake/"


class DataError(DeepfakeError):
    """Missing, empty or unreadable input data; the message names the file or folder and the fix."""


@dataclass
class ImageSet:
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64; 0 real, 1 fake, -1 unlabelled
    paths: list[str]  # source file of each image

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSet:
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSet(self.images[indices], self.labels[indices], [self.paths[i] for i in indices])

    @staticmethod
    def concat(*sets: ImageSet) -> ImageSet:
        return ImageSet(
            np.concatenate([s.images for s in sets]),
            np.concatenate([s.labels for s in sets]),
            [p for s in sets for p in s.paths],
        )


# ---------------------------------------------------------------------------------------------
# Discovery
# ---------------------------------------------------------------------------------------------

def _child(folder: Path, relative: str) -> Path | None:
    """``folder/relative`` with every part matched case-insensitively (train/REAL == train/real)."""
    current = folder
    for part in relative.split("/"):
        if not current.is_dir():
            return None
        match = next((c for c in sorted(current.iterdir()) if c.is_dir() and c.name.lower() == part), None)
        if match is None:
            return None
        current = match
    return current


def find_labelled_dirs(data_dir: str | Path) -> tuple[Path, Path]:
    """(real folder, fake folder) of the first layout present in ``data_dir``."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data folder {data_dir} does not exist: {LAYOUT_HELP}")
    for real_name, fake_name in LABELLED_LAYOUTS:
        real, fake = _child(data_dir, real_name), _child(data_dir, fake_name)
        if real is not None and fake is not None:
            return real, fake
        if real is not None or fake is not None:
            found, missing = (real, fake_name) if real is not None else (fake, real_name)
            raise DataError(f"found {found} but not {data_dir / missing}: add the other class ({LAYOUT_HELP})")
    raise DataError(f"no labelled image folders in {data_dir}: {LAYOUT_HELP}")


def find_test_dir(data_dir: str | Path) -> Path | None:
    """``data_dir/test`` (any case) if it exists."""
    return _child(Path(data_dir), "test")


def list_image_files(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder`` in natural name order; .DS_Store, Thumbs.db, notes are skipped."""
    return sorted((p for p in Path(folder).iterdir() if p.is_file() and is_image_file(p)), key=_natural_key)


def is_image_file(path: Path) -> bool:
    """A PNG, JPEG, WebP or BMP by its name, and no hidden file (macOS's ._photo.png is not an image)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def walk_files(folder: str | Path) -> Iterator[Path]:
    """Every file in ``folder`` and below, lazily, hidden ones left out: a folder's files in natural name
    order, then its subfolders' in natural order, depth first; no list of all the files is ever held."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted((d for d in dirs if not d.startswith(".")), key=lambda d: _natural_key(Path(d)))
        for name in sorted((f for f in files if not f.startswith(".")), key=lambda f: _natural_key(Path(f))):
            yield Path(root, name)


def _natural_key(path: Path) -> list:
    """2.png before 10.png; re.split puts text at even and numbers at odd positions, so keys compare."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def file_number(path: str | Path) -> int | None:
    """The number in a file name (``7.png``, ``img_0007.png`` -> 7); None unless there is exactly one."""
    numbers = re.findall(r"\d+", Path(path).stem)
    return int(numbers[0]) if len(numbers) == 1 else None


NAMED_IN_WARNING = 5  # offending test files a warning names


def order_test_files(paths: Sequence[str | Path]) -> tuple[list[Path], list[int], str | None]:
    """Test files in file-number order, the index of each (its number) and a warning or None.

    The submission index is the number in the file name. If any file has no single number, or
    two share one, there is no such index: the files are then in natural name order, indexed by
    position 1..N, and the warning says so.
    """
    numbers = [file_number(p) for p in paths]
    if None not in numbers and len(set(numbers)) == len(numbers):
        order = sorted(range(len(paths)), key=numbers.__getitem__)
        return [Path(paths[i]) for i in order], [numbers[i] for i in order], None
    ordered = sorted((Path(p) for p in paths), key=_natural_key)
    unnumbered = [Path(p).name for p, n in zip(paths, numbers) if n is None]
    counts = Counter(numbers)
    shared = [Path(p).name for p, n in zip(paths, numbers) if n is not None and counts[n] > 1]
    problem = "; ".join(
        f"{text} ({', '.join(sorted(names)[:NAMED_IN_WARNING])}{', ...' if len(names) > NAMED_IN_WARNING else ''})"
        for text, names in (("no single number in the name", unnumbered), ("a number shared", shared)) if names
    )
    warning = (f"test files with {problem}: indexing all {len(ordered)} by position 1..{len(ordered)} in natural "
               f"name order (rename or remove those files to index by file number)")
    return ordered, list(range(1, len(ordered) + 1)), warning


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

class UnreadableImageError(DataError):
    """A file that does not decode to an image; ``reason`` says why, for callers that skip it and go on."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}; delete or replace it")
        self.path, self.reason = path, reason


@dataclass
class DecodedImage:
    """One file as the models see it, and what reading it changed."""

    pixels: np.ndarray  # (size, size, 3) uint8 RGB
    resized: bool  # the file had another size
    converted: bool  # grayscale, alpha or 16-bit pixels became 8-bit RGB


def read_image(path: str | Path, size: int = 32) -> DecodedImage:
    """One file decoded to RGB and resized to ``size`` (INTER_AREA); UnreadableImageError if it is no image."""
    pixels, converted = _read_rgb(Path(path))
    resized = pixels.shape[:2] != (size, size)
    if resized:
        pixels = cv2.resize(pixels, (size, size), interpolation=cv2.INTER_AREA)
    return DecodedImage(pixels, resized, converted)


def _read_rgb(path: Path) -> tuple[np.ndarray, bool]:
    """Any supported file as RGB uint8 (grayscale, alpha, palette and 16-bit included), and whether its pixels
    had to be converted (palettes are expanded by the decoder itself and do not count)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise UnreadableImageError(path, error.strerror or str(error)) from error
    if data.size == 0:
        raise UnreadableImageError(path, "the file is empty")
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)  # palette -> BGR(A)
    except cv2.error:
        image = None
    if image is None or image.size == 0:
        raise UnreadableImageError(path, "the file is corrupt or not an image")
    converted = image.dtype != np.uint8 or image.ndim == 2 or image.shape[2] == 4
    if image.dtype != np.uint8:
        image = (image / (np.iinfo(image.dtype).max / 255)).round().astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB), converted
    if image.shape[2] == 4:
        # Composite on white, as viewers do, so transparent pixels don't become arbitrary colours.
        alpha = image[:, :, 3:4].astype(np.float32) / 255
        image = (image[:, :, :3] * alpha + 255 * (1 - alpha)).round().astype(np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), converted


LOAD_CHUNK = 512  # files a thread decodes per task: fewer hand-overs than one task a file (1.4x faster here)
LOAD_THREADS = 8  # at most; OpenCV decodes without the GIL, so threads use every core


def load_images(paths: Sequence[str | Path], size: int = 32) -> tuple[np.ndarray, int]:
    """All images as (N, size, size, 3) uint8 RGB, and how many had another size and were resized.

    More than ``LOAD_CHUNK`` files decode on a thread pool; the order is the paths', and a corrupt file
    still stops the load with its name (the first one in path order).
    """
    images = np.empty((len(paths), size, size, 3), dtype=np.uint8)

    def load(start: int) -> int:
        resized = 0
        for i in range(start, min(start + LOAD_CHUNK, len(paths))):
            image = read_image(paths[i], size)
            images[i] = image.pixels
            resized += image.resized
        return resized

    starts = range(0, len(paths), LOAD_CHUNK)
    threads = min(LOAD_THREADS, os.cpu_count() or 1, len(starts))
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            resized = sum(pool.map(load, starts))
    else:
        resized = sum(map(load, starts))
    if resized:
        log.info("resized %d of %d images to %dx%d", resized, len(paths), size, size)
    return images, resized


def _class_files(data_dir: str | Path) -> list[tuple[Path, list[Path]]]:
    """(folder, image files) per class, in label order."""
    return [(folder, list_image_files(folder)) for folder in find_labelled_dirs(data_dir)]


def load_labelled(data_dir: str | Path, size: int = 32) -> ImageSet:
    """Every labelled image under ``data_dir``, real ones first."""
    classes = _class_files(data_dir)
    for label, (folder, files) in enumerate(classes):
        if not files:
            raise DataError(f"no {CLASS_NAMES[label]} images in {folder}: add PNG/JPEG/WebP/BMP files ({LAYOUT_HELP})")
    files = [f for _, found in classes for f in found]
    labels = np.concatenate([np.full(len(found), label, dtype=np.int64) for label, (_, found) in enumerate(classes)])
    images, _ = load_images(files, size)
    return ImageSet(images, labels, [str(f) for f in files])


def load_test(test_dir: str | Path, size: int = 32) -> tuple[ImageSet, list[int]]:
    """Test images in file-number order with their indices (see :func:`order_test_files`).

    Labels are -1, or 0/1 when ``test_dir`` holds REAL/FAKE folders (CIFAKE's labelled test
    set); the two folders reuse the same numbers, so those images are indexed 1..N, real first.
    """
    test_dir = Path(test_dir)
    if not test_dir.is_dir():
        raise DataError(f"test folder {test_dir} does not exist: pass --test-dir with the unlabelled images")
    if all(_child(test_dir, name) for name in CLASS_NAMES):
        images = load_labelled(test_dir, size)
        log.info("test folder %s has real/fake folders: %d labelled test images, indexed 1..%d",
                 test_dir, len(images), len(images))
        return images, list(range(1, len(images) + 1))
    files = list_image_files(test_dir)
    if not files:
        raise DataError(f"no images in test folder {test_dir}: add the PNG/JPEG/WebP/BMP test images")
    ordered, indices, warning = order_test_files(files)
    if warning:
        log.warning("%s", warning)
    images, _ = load_images(ordered, size)
    return ImageSet(images, np.full(len(ordered), -1, dtype=np.int64), [str(p) for p in ordered]), indices


def resolve_data_dir(data_dir: str | Path, explicit: bool, demo_root: str | Path) -> Path:
    """The labelled data to use: ``data_dir`` if it has images, else (unless it was asked for) the demo set.

    Only a data folder with no labelled images at all falls back to the demo set: a half-filled
    layout (one class folder, or one empty class) fails loudly, naming the folder to fix.
    """
    data_dir = Path(data_dir)
    try:
        has_images = any(files for _, files in _class_files(data_dir))
    except DataError:
        partial = any(_child(data_dir, name) for layout in LABELLED_LAYOUTS for name in layout)
        if explicit or partial:
            raise
        has_images = False
    if has_images:
        return data_dir
    if explicit:
        raise DataError(f"no labelled images in {data_dir}: add PNG/JPEG/WebP/BMP files ({LAYOUT_HELP})")
    log.info("no labelled images in %s; building demo data in %s (reused once built)", data_dir, demo_root)
    return build_demo_dataset(demo_root)


# ---------------------------------------------------------------------------------------------
# Split
# ---------------------------------------------------------------------------------------------

def split_indices(labels: np.ndarray, val_fraction: float, seed: int,
                  source: str = "the labelled images") -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded, disjoint train/validation indices (sorted), made before anything is derived.

    DataError, naming ``source``, when the images are too few for both classes on both sides.
    """
    indices = np.arange(len(labels))
    try:
        train, val = train_test_split(indices, test_size=val_fraction, random_state=seed, stratify=labels)
    except ValueError as error:
        counts = np.bincount(labels, minlength=len(CLASS_NAMES))
        raise DataError(f"{source} ({', '.join(f'{n} {c}' for n, c in zip(counts, CLASS_NAMES))}) are too few for "
                        f"a stratified split with {val_fraction:g} of them for validation: add images") from error
    return np.sort(train), np.sort(val)


def images_digest(images: ImageSet) -> str:
    """Short hash of an image set (paths, labels and pixels).

    The training split's digest is its id: checkpoints and generated samples carry it, so a model or
    sample made from another split, or from images since replaced under the same names, is never taken
    for one of this split's.
    """
    digest = hashlib.sha1("\n".join(images.paths).encode())
    for array in (images.labels, images.images):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:12]


SPLIT_NAME = "split.json"  # the saved split, in the run's checkpoint folder


def save_split(path: str | Path, train: ImageSet, val: ImageSet, **meta) -> None:
    """Record the split as image paths (as given) and labels, plus ``meta``, in a JSON file.

    Paths stay as given because the training split's digest is made of them; the folder they are
    relative to is recorded beside them, so the split also loads from any other working folder.
    """
    write_json(path, {
        **meta,
        "cwd": str(Path.cwd()),
        "train": {"paths": train.paths, "labels": train.labels.tolist()},
        "val": {"paths": val.paths, "labels": val.labels.tolist()},
    })


def load_split(path: str | Path, size: int = 32) -> tuple[ImageSet, ImageSet, dict]:
    """The saved split's (train, val, meta), images reloaded from the recorded paths."""
    path, (parts, meta, training_cwd) = Path(path), _read_split(path)
    train, val = (_split_images(path, *parts[name], training_cwd, size) for name in ("train", "val"))
    return train, val, meta


def load_validation(path: str | Path, size: int = 32) -> tuple[ImageSet, dict]:
    """The saved split's (validation images, meta) alone: evaluation and the ensemble need no training image
    (96,000 of them for CIFAKE's full release)."""
    parts, meta, training_cwd = _read_split(path)
    return _split_images(Path(path), *parts["val"], training_cwd, size), meta


def read_split_meta(path: str | Path) -> dict:
    """The saved split's meta (its data id, seed, data folder) without reading an image: a run copied without
    its data can still say which split its checkpoints were trained on."""
    return _read_split(path)[1]


def _read_split(path: str | Path) -> tuple[dict[str, tuple[list, list]], dict, str | None]:
    """({part: (paths, labels)}, meta, the folder training ran in) of a saved split."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no saved split at {path}: run `python deepfake_detection.py` first")
    try:
        saved = read_json(path)
        parts = {name: (saved[name]["paths"], saved[name]["labels"]) for name in ("train", "val")}
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"split file {path} is damaged ({error}): delete it and rerun training") from error
    meta = {k: v for k, v in saved.items() if k not in parts}
    return parts, meta, meta.pop("cwd", None)


def _split_images(split_file: Path, paths: list[str], labels: list[int], training_cwd: str | None,
                  size: int) -> ImageSet:
    images, _ = load_images([_split_image(p, split_file, training_cwd) for p in paths], size)
    return ImageSet(images, np.array(labels, dtype=np.int64), list(paths))


def _split_image(recorded: str, split_file: Path, training_cwd: str | None) -> Path:
    """The file a recorded path names: as recorded, else under the folder training ran in."""
    candidates = [Path(recorded)] + ([Path(training_cwd) / recorded] if training_cwd else [])
    hit = next((c for c in candidates if c.is_file()), None)
    if hit is not None:
        return hit
    if Path(recorded).is_absolute() or training_cwd:
        raise DataError(f"image {candidates[-1]} of the saved split {split_file} is gone: restore it, or "
                        f"delete {split_file} and rerun training")
    raise DataError(f"image {recorded} of the saved split {split_file} is not under {Path.cwd()}: run from "
                    f"the folder training ran in (the split's paths are relative to it)")


# ---------------------------------------------------------------------------------------------
# Tensors and augmentation
# ---------------------------------------------------------------------------------------------

def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC array -> contiguous uint8 NCHW tensor (kept uint8: 4x less memory than float)."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def train_transform(style: str = "lossless", size: int = 32, corruption_prob: float = 0.0) -> A.Compose:
    """The per-batch jitter of training.

    "lossless" only moves pixels (mirror, shift by up to 1/16 of the side, borders reflected), so the
    generator's pixel-level traces survive; "seed" is the seed notebook's jitter (small rotations and
    colour jitter, which resample and recolour the image). Measured in benchmarks/LEVERS.md.
    ``corruption_prob`` of the images then get one random everyday corruption (:func:`training_corruption`).
    """
    if style == "lossless":
        jitter = [A.HorizontalFlip(p=0.5), *_whole_pixel_shift(size, size // 8)]
    else:
        _check_style(style)
        jitter = [
            A.HorizontalFlip(p=0.5),
            A.Affine(rotate=(-10, 10), border_mode=cv2.BORDER_REFLECT_101, p=0.3),
            A.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02, p=0.3),
        ]
    corruption = [training_corruption(corruption_prob)] if corruption_prob > 0 else []
    return A.Compose(jitter + corruption)


def training_corruption(p: float) -> A.OneOf:
    """Blur, JPEG or Gaussian noise at a random strength, with probability ``p``.

    Blur + JPEG augmentation is what made a detector of generated images hold up under re-encoding
    and resizing in Wang et al., "CNN-generated images are surprisingly easy to spot... for now"
    (CVPR 2020); the ranges here are scaled to 32x32 images and cover the benchmark's JPEG q40,
    noise 0.08 and blur 1.0.
    """
    return A.OneOf([
        A.GaussianBlur(blur_limit=0, sigma_limit=(0.3, 1.5), p=1.0),
        A.ImageCompression(compression_type="jpeg", quality_range=(30, 95), p=1.0),
        A.GaussNoise(std_range=(0.01, 0.1), p=1.0),
    ], p=p)


def sample_transform(style: str = "lossless", size: int = 32) -> A.Compose:
    """The generator of augmented training samples (new images, not a per-batch jitter); keeps ``size``.

    "lossless": any of the 8 flips/right-angle rotations plus a whole-pixel shift of up to 1/8 of the
    side, which makes new images without resampling; "seed": the seed notebook's heavy pipeline.
    """
    if style == "lossless":
        return A.Compose([A.D4(p=1.0), *_whole_pixel_shift(size, size // 4)])
    _check_style(style)
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.3),
        A.Affine(rotate=(-30, 30), translate_percent=(-0.1, 0.1), border_mode=cv2.BORDER_REFLECT_101, p=1.0),
        A.RandomResizedCrop(size=(size, size), scale=(0.7, 1.0), p=1.0),
        A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1, p=1.0),
        # Corners pulled in by |N(0, 0.04..0.08)| of the side, ~5% on average: torchvision's
        # RandomPerspective(distortion_scale=0.2) moves them by U(0, 10%).
        A.Perspective(scale=(0.04, 0.08), p=0.5),
    ])


def _whole_pixel_shift(size: int, pad: int) -> list:
    """Reflect-pad by ``pad`` pixels in all, then crop back to ``size``: a shift that never resamples."""
    return [A.PadIfNeeded(size + pad, size + pad, border_mode=cv2.BORDER_REFLECT_101), A.RandomCrop(size, size)]


def _check_style(style: str) -> None:
    if style not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {style!r}; choose one of {', '.join(AUGMENTATIONS)}")


def augment(images: np.ndarray, transform: A.Compose, seed: int) -> np.ndarray:
    """``transform`` applied to each image; the same seed gives the same output (reseeds ``transform``)."""
    transform.set_random_seed(seed)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        out[i] = transform(image=image)["image"]  # a transform that changes the shape fails here
    return out
