"""Training batches, jittered where they keep the device busy.

A step's batch is the same function of its image indices and its seed wherever it is made: in the
training process on a CPU (which has no cores to spare), in DataLoader workers on a GPU, so the jitter
(albumentations, one image at a time) runs beside the training steps instead of between them, and
pinned memory lets the copy to the GPU overlap the step before it.
"""
from __future__ import annotations

import os
from typing import Iterator

import albumentations as A
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .data import augment, to_tensor

MAX_WORKERS = 8
Key = tuple[torch.Tensor, int]  # (image indices of one batch, the seed of its jitter)


class JitteredBatches(Dataset):
    """``dataset[(indices, seed)]``: those images as a uint8 NCHW batch, jittered with ``seed``, and their labels."""

    def __init__(self, images: np.ndarray, labels: torch.Tensor, transform: A.Compose) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, torch.Tensor]:
        idx, seed = key
        return to_tensor(augment(self.images[idx.numpy()], self.transform, seed)), self.labels[idx]


class EpochPlan(Sampler):
    """The keys of the epoch about to run, set before each pass (the workers outlive the epoch)."""

    def __init__(self) -> None:
        self.keys: list[Key] = []

    def __iter__(self) -> Iterator[Key]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


def worker_count(device: torch.device, ranks: int = 1) -> int:
    """Jitter processes beside training: none on a CPU, this rank's share of the cores (at most ``MAX_WORKERS``)
    on a GPU."""
    return 0 if device.type != "cuda" else min(MAX_WORKERS, max(1, (os.cpu_count() or 1) // ranks))


def batch_loader(batches: JitteredBatches, plan: EpochPlan, workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """The planned batches in order, made by ``workers`` processes that live as long as the loader (or in this
    process when 0), in pinned memory when ``pin_memory``."""
    return DataLoader(batches, batch_size=None, sampler=plan, num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=pin_memory, prefetch_factor=4 if workers else None,
                      generator=torch.Generator())  # its own: each pass draws a seed, which must not move the global one
