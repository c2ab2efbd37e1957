"""Pseudo-labels: only confident calls are kept, each labelled with the call."""
import numpy as np
import torch
from torch import nn

from deepfake.data import ImageSet, images_digest
from deepfake.pseudo_labels import pseudo_labelled


class MeanBrightnessModel(nn.Module):
    """Logits (0, 10 * (mean - 0.5)): brighter images look faker; a mirror image gets the same call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fake_logit = 10 * (x.mean(dim=(1, 2, 3)) - 0.5)
        return torch.stack([torch.zeros_like(fake_logit), fake_logit], dim=1)


def grey_images(levels: list[float]) -> ImageSet:
    images = np.stack([np.full((8, 8, 3), round(255 * level), dtype=np.uint8) for level in levels])
    return ImageSet(images, np.full(len(levels), -1), [f"{i + 1}.png" for i in range(len(levels))])


def test_only_confident_calls_are_kept_and_labelled_with_the_call():
    # p(fake) = sigmoid(10 * (level - 0.5)): 0.98, 0.62, 0.02, 0.5, 0.88
    unlabelled = grey_images([0.9, 0.55, 0.1, 0.5, 0.7])
    kept = pseudo_labelled(MeanBrightnessModel(), unlabelled, confidence=0.9, device=torch.device("cpu"))
    assert kept.paths == ["1.png", "3.png"]
    assert kept.labels.tolist() == [1, 0]
    assert np.array_equal(kept.images, unlabelled.images[[0, 2]])
    looser = pseudo_labelled(MeanBrightnessModel(), unlabelled, confidence=0.6, device=torch.device("cpu"))
    assert looser.paths == ["1.png", "2.png", "3.png", "5.png"] and looser.labels.tolist() == [1, 1, 0, 1]


def test_the_digest_changes_with_any_pixel():
    images = grey_images([0.2, 0.8])
    changed = grey_images([0.2, 0.8])
    changed.images[1, 0, 0, 0] += 1
    assert images_digest(images) == images_digest(grey_images([0.2, 0.8])) != images_digest(changed)
