"""Pseudo-labels for the unlabelled test images, so adversarial fine-tuning has more images to learn from.

Robust self-training (Carmon et al., "Unlabeled Data Improves Adversarial Robustness", 2019): adversarial
training needs more data than standard training, and unlabelled images labelled by a standard model
supply it. Only the images the model calls confidently are kept, each with the model's call as its label;
the calls use flip test-time augmentation, which makes them steadier than one view.
"""
from __future__ import annotations

import numpy as np
import torch

from .data import ImageSet
from .inference import predict_fake_proba


def pseudo_labelled(
    model: torch.nn.Module, unlabelled: ImageSet, confidence: float, device: torch.device, batch_size: int = 256,
) -> ImageSet:
    """The images ``model`` calls with probability >= ``confidence``, labelled 1 (fake) or 0 (real) by that call."""
    fake = predict_fake_proba(model, unlabelled.images, batch_size=batch_size, device=device, tta_flip=True)
    keep = np.flatnonzero(np.maximum(fake, 1 - fake) >= confidence)
    return ImageSet(unlabelled.images[keep], (fake[keep] >= 0.5).astype(np.int64), [unlabelled.paths[i] for i in keep])
