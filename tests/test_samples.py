"""Generated samples: training split only, true labels, deterministic, reused when current."""
from pathlib import Path

import numpy as np
import torch

from deepfake.data import load_labelled, load_split, split_indices
from deepfake.models import build_model
from deepfake.samples import adversarial_samples, augmented_samples, sample_manifest


def test_samples_come_only_from_training_images_with_true_labels(tiny_run):
    train, val, _ = load_split(Path(tiny_run.checkpoint_dir) / "split.json", tiny_run.image_size)
    train_labels = dict(zip(train.paths, train.labels.tolist()))
    for kind in ("augmented", "adversarial"):
        items = sample_manifest(Path(tiny_run.generated_dir) / kind)["items"]
        sources = {item["source"] for item in items}
        assert sources <= set(train_labels), f"{kind} samples derived from non-training images"
        assert not sources & set(val.paths)
        assert all(item["label"] == train_labels[item["source"]] for item in items)
    eps = [item["eps"] for item in sample_manifest(Path(tiny_run.generated_dir) / "adversarial")["items"]]
    assert all(min(abs(e - c) for c in tiny_run.recipe.fgsm_epsilons) < 1e-6 for e in eps)


def _train_split(config):
    labelled = load_labelled(config.data_dir, config.image_size)
    train_idx, _ = split_indices(labelled.labels, config.val_fraction, config.seed)
    return labelled.subset(train_idx)


def test_augmented_samples_are_deterministic_and_reused(tiny_config, tmp_path):
    train = _train_split(tiny_config)
    first = augmented_samples(train, tiny_config, "data")
    manifest = Path(tiny_config.generated_dir) / "augmented" / "manifest.json"
    written = manifest.stat().st_mtime_ns
    again = augmented_samples(train, tiny_config, "data")
    assert manifest.stat().st_mtime_ns == written
    tiny_config.generated_dir = str(tmp_path / "elsewhere")
    regenerated = augmented_samples(train, tiny_config, "data")
    assert np.array_equal(first.images, again.images) and np.array_equal(first.images, regenerated.images)
    assert np.bincount(first.labels).tolist() == [tiny_config.augment_per_class] * 2


def test_adversarial_samples_differ_from_sources_within_budget(tiny_config):
    train = _train_split(tiny_config)
    model = build_model("resnet_se").eval()
    samples = adversarial_samples(model, "resnet_se", train, tiny_config, "data", "cpu")
    assert len(samples) == tiny_config.adversarial_count
    items = sample_manifest(Path(tiny_config.generated_dir) / "adversarial")["items"]
    sources = {path: i for i, path in enumerate(train.paths)}
    for image, item in zip(samples.images, items):
        source = train.images[sources[item["source"]]].astype(int)
        change = np.abs(image.astype(int) - source).max()
        assert 0 < change <= round(item["eps"] * 255) + 1


def test_adversarial_samples_are_remade_for_a_different_crafting_model(tiny_config):
    """The cache must not hand a retrained (``--force``) or different base model's FGSM images to phase 2."""
    train = _train_split(tiny_config)
    torch.manual_seed(0)
    first = adversarial_samples(build_model("resnet_se").eval(), "resnet_se", train, tiny_config, "data", "cpu")
    manifest = Path(tiny_config.generated_dir) / "adversarial" / "manifest.json"
    written = manifest.stat().st_mtime_ns
    torch.manual_seed(0)
    adversarial_samples(build_model("resnet_se").eval(), "resnet_se", train, tiny_config, "data", "cpu")
    assert manifest.stat().st_mtime_ns == written, "the same weights must reuse the samples on disk"
    torch.manual_seed(1)
    second = adversarial_samples(build_model("resnet_se").eval(), "resnet_se", train, tiny_config, "data", "cpu")
    assert manifest.stat().st_mtime_ns != written
    assert not np.array_equal(first.images, second.images)
