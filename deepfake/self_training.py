"""Robust self-training: the unlabelled test images, labelled by one member, join the others' phase 2.

At about 1,000 labelled images a from-scratch member gains robustness from more images more than from
more epochs (Carmon et al. 2019, "Unlabeled data improves adversarial robustness"). The accurate
member's base model calls each unlabelled image; phase 2 then trains on those calls like on labels,
clean and attacked. Test images whose pixels equal a validation image are left out, so validation
images never teach.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from .data import ImageSet, images_digest, load_test
from .inference import predict_fake_proba

log = logging.getLogger(__name__)


def teacher_labelled(teacher: torch.nn.Module, teacher_name: str, test_dir: Path, val: ImageSet, size: int,
                     device: torch.device) -> tuple[ImageSet, str]:
    """The test images labelled by ``teacher``'s calls at 0.5, and their digest (images, paths and calls)."""
    test, _ = load_test(test_dir, size)
    seen = {_pixels(image) for image in val.images}
    keep = np.array([_pixels(image) not in seen for image in test.images], dtype=bool)
    if not keep.all():
        log.info("self-training: %d test images equal a validation image and are left out", int((~keep).sum()))
    test = test.subset(np.flatnonzero(keep))
    calls = (predict_fake_proba(teacher, test.images, device=device) >= 0.5).astype(np.int64)
    labelled = ImageSet(test.images, calls, test.paths)
    log.info("self-training: %d test images from %s, %d called fake by %s's base model", len(labelled), test_dir,
             int(calls.sum()), teacher_name)
    return labelled, images_digest(labelled)


def _pixels(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()
