"""The run's single results file: training writes it, evaluation and the ensemble add to it."""
from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

from .config import Config, config_from_dict
from .errors import CheckpointError
from .io import read_json, write_json

RESULTS_NAME = "results.json"


def results_path(checkpoint_dir: str | Path) -> Path:
    return Path(checkpoint_dir) / RESULTS_NAME


def load_results(path: str | Path) -> dict:
    """The results so far, or an empty dict before the first run."""
    path = Path(path)
    return read_json(path) if path.exists() else {}


def update_results(path: str | Path, mutate: Callable[[dict], None]) -> dict:
    """Read-modify-write under an atomic rename, so other models' entries are never lost."""
    results = load_results(path)
    mutate(results)
    write_json(path, results)
    return results


@contextmanager
def timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    """Add the block's wall time to ``seconds[key]``, to the 10 ms results record."""
    started = time.perf_counter()
    yield
    seconds[key] = round(seconds.get(key, 0.0) + time.perf_counter() - started, 2)


def library_versions() -> dict[str, str]:
    import albumentations
    import numpy
    import sklearn
    import timm
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "albumentations": albumentations.__version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
    }


def machine_description() -> str:
    import os

    return f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} cores"


def kept_epochs(best_epoch: int | None, averaged_epochs: int = 0) -> str:
    """Which base epochs a model's kept weights come from, for tables: ``24``, or ``21-30 (mean)``."""
    if best_epoch is None:
        return ""
    return f"{best_epoch - averaged_epochs + 1}-{best_epoch} (mean)" if averaged_epochs else str(best_epoch)


def load_run_config(checkpoint_dir: str | Path) -> Config:
    """The config a finished training run recorded, for evaluation and the ensemble.

    The run may since have been copied, moved or be read from another working directory: it now lives in
    ``checkpoint_dir``, and its figures folder keeps its place relative to it, so that re-evaluating a copy
    writes the copy's report and never overwrites the original's. Only a figures folder given one way
    (absolute) and the checkpoints the other (relative) had no place relative to them: it stays as given.
    """
    results = load_results(results_path(checkpoint_dir))
    if "config" not in results:
        raise CheckpointError(
            f"no training run found in {checkpoint_dir}: run `python deepfake_detection.py` first"
        )
    recorded = config_from_dict(results["config"])
    viz_dir = recorded.viz_dir
    if Path(viz_dir).is_absolute() == Path(recorded.checkpoint_dir).is_absolute():
        viz_dir = os.path.normpath(Path(checkpoint_dir) / os.path.relpath(viz_dir, recorded.checkpoint_dir))
    return replace(recorded, checkpoint_dir=str(checkpoint_dir), viz_dir=viz_dir)
