"""Augmented and FGSM adversarial samples, derived from the training split only.

Samples are written as PNG with a manifest recording each file's source image, label and
the config that made them (for FGSM images, also the weights they were crafted against), so a
rerun with the same config and base model reuses them and a test can prove that no validation
image was ever a source.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import torch

from .attacks import fgsm, sample_epsilons
from .config import Config
from .data import CLASS_NAMES, ImageSet, augment, load_images, sample_transform, to_tensor
from .inference import to_float
from .io import atomic_path, read_json, write_json

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def augmented_samples(train: ImageSet, config: Config, data_id: str) -> ImageSet:
    """``augment_per_class`` augmentations per class, each from a random training image."""
    def make() -> tuple[ImageSet, list[dict], dict]:
        rng = np.random.default_rng(config.seed)
        sources = np.concatenate([
            rng.choice(np.flatnonzero(train.labels == label), config.augment_per_class, replace=True)
            for label in range(len(CLASS_NAMES))
        ])
        images = augment(train.images[sources], sample_transform(config.augmentation, config.image_size), config.seed)
        samples = ImageSet(images, train.labels[sources].copy(), [train.paths[i] for i in sources])
        return samples, [{} for _ in sources], {}

    keys = ("seed", "val_fraction", "augment_per_class", "augmentation", "image_size")
    return _reuse_or_generate("augmented", config, f"{data_id}-{config.fingerprint(keys)}", make)


def adversarial_samples(
    model: torch.nn.Module, crafted_by: str, train: ImageSet, config: Config, data_id: str, device: torch.device,
) -> ImageSet:
    """``adversarial_count`` FGSM images against a trained base model, at the shared recipe's budgets; each keeps
    its source's true label."""
    def make() -> tuple[ImageSet, list[dict], dict]:
        generator = torch.Generator().manual_seed(config.seed + 7)
        sources = torch.randperm(len(train), generator=generator)[: config.adversarial_count].numpy()
        if len(sources) < config.adversarial_count:
            sources = np.resize(sources, config.adversarial_count)
        eps = sample_epsilons(len(sources), config.recipe.fgsm_epsilons, generator)
        adversarial = []
        for chunk in np.array_split(np.arange(len(sources)), max(1, len(sources) // config.eval_batch_size)):
            x = to_float(to_tensor(train.images[sources[chunk]]), device)
            y = torch.from_numpy(train.labels[sources[chunk]]).to(device)
            x_adv = fgsm(model, x, y, eps[chunk].to(device))
            adversarial.append((x_adv * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy())
        samples = ImageSet(np.concatenate(adversarial), train.labels[sources].copy(), [train.paths[i] for i in sources])
        extra = [{"eps": float(e), "crafted_by": crafted_by} for e in eps]
        return samples, extra, {"crafted_by": crafted_by}

    return _reuse_or_generate("adversarial", config, adversarial_fingerprint(model, crafted_by, config, data_id), make)


def adversarial_fingerprint(model: torch.nn.Module, crafted_by: str, config: Config, data_id: str) -> str:
    """What phase 2's adversarial pool depends on: the split, its size and budgets, and the crafting model's name and
    weights (which hold its recipe). The pool's cache and the final checkpoints trained on it are both keyed by it."""
    recipe = config.fingerprint(("seed", "image_size", "adversarial_count"), epsilons=config.recipe.fgsm_epsilons)
    return f"{data_id}-{recipe}-{crafted_by}-{weights_digest(model)}"


def weights_digest(model: torch.nn.Module) -> str:
    """A short hash of the weights: FGSM images crafted against other weights (a retrained base model) are stale."""
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:12]


def _reuse_or_generate(kind: str, config: Config, fingerprint: str, make) -> ImageSet:
    """Samples on disk if their manifest matches ``fingerprint``; otherwise ``make()`` them and write them."""
    out_dir = Path(config.generated_dir) / kind
    cached = _load_cached(out_dir, fingerprint, config.image_size)
    if cached is not None:
        log.info("reusing %d %s samples in %s", len(cached), kind, out_dir)
        return cached
    samples, extra, meta = make()
    _write_samples(out_dir, samples, fingerprint, extra=extra, **meta)
    log.info("generated %d %s samples in %s", len(samples), kind, out_dir)
    return _load_cached(out_dir, fingerprint, config.image_size)


def sample_manifest(out_dir: str | Path) -> dict:
    """What a samples folder holds: its fingerprint, how it was made, and each file's source and label."""
    return read_json(Path(out_dir) / MANIFEST)


def _write_samples(out_dir: Path, samples: ImageSet, fingerprint: str, extra: list[dict], **meta) -> None:
    shutil.rmtree(out_dir, ignore_errors=True)
    items = []
    for i, (image, label, source) in enumerate(zip(samples.images, samples.labels, samples.paths)):
        relative = Path(CLASS_NAMES[label]) / f"{i:05d}.png"
        path = out_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes())
        items.append({"file": relative.as_posix(), "source": source, "label": int(label), **extra[i]})
    write_json(out_dir / MANIFEST, {"fingerprint": fingerprint, **meta, "items": items})


def _load_cached(out_dir: Path, fingerprint: str, size: int) -> ImageSet | None:
    if not (out_dir / MANIFEST).exists():
        return None
    manifest = sample_manifest(out_dir)
    files = [out_dir / item["file"] for item in manifest["items"]]
    if manifest.get("fingerprint") != fingerprint or not all(f.exists() for f in files):
        return None
    images, _ = load_images(files, size)
    labels = np.array([item["label"] for item in manifest["items"]], dtype=np.int64)
    return ImageSet(images, labels, [str(f) for f in files])
