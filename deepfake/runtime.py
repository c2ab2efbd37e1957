"""Process set-up shared by every entry point: logging that spares the progress bars, threads, seeds, device."""
from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

from . import distributed
from .config import Config
from .inference import select_device


class TqdmLoggingHandler(logging.Handler):
    """Log lines that do not tear the progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        tqdm.write(self.format(record))


def setup_runtime(config: Config) -> torch.device:
    """Logging, threads and seeds; the device (under torchrun, this rank's GPU, its share of the CPU cores,
    and its rank in every log line)."""
    package_logger = logging.getLogger("deepfake")
    if not package_logger.handlers:
        handler = TqdmLoggingHandler()
        rank = f" [rank {distributed.rank()}]" if distributed.is_distributed() else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s{rank} %(message)s", "%H:%M:%S"))
        package_logger.addHandler(handler)
        package_logger.setLevel(logging.INFO)
    torch.set_num_threads(config.threads or max(1, (os.cpu_count() or 1) // distributed.world_size()))
    seed_everything(config.seed)
    return distributed.local_device(select_device(config.device))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
