"""Where the notebooks find their data and training run, so each one runs top to bottom in a fresh clone.

Both come from the project config (``data/`` and ``checkpoints/`` under the repository root) or
from ``DEEPFAKE_DATA_DIR`` / ``DEEPFAKE_CHECKPOINT_DIR`` (absolute, or relative to the repository
root). Without images, the data is the demo set the pipeline itself falls back to. Without a
training run, a notebook trains a tiny one on demo data in a temporary folder, so ``checkpoints/``
never holds a throw-away model that the ensemble could pick up; its numbers only show the code runs.
"""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

from .config import make_config
from .data import resolve_data_dir
from .demo_data import build_demo_dataset

DATA_ENV = "DEEPFAKE_DATA_DIR"
CHECKPOINT_ENV = "DEEPFAKE_CHECKPOINT_DIR"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_RUN_IMAGES = dict(per_class=60, test_count=20)  # a tiny run on these takes about a minute on 2 CPU cores


def data_dir() -> Path:
    """$DEEPFAKE_DATA_DIR, else the config's data dir if it holds labelled images, else the demo set in it."""
    explicit = os.environ.get(DATA_ENV)
    configured = REPO_ROOT / (explicit or make_config().data_dir)
    return resolve_data_dir(configured, explicit=bool(explicit), demo_root=configured / "demo")


def checkpoint_dir() -> Path:
    """$DEEPFAKE_CHECKPOINT_DIR, else the config's checkpoint dir if it holds a training run, else a tiny demo run."""
    from .errors import CheckpointError
    from .results import load_run_config

    explicit = os.environ.get(CHECKPOINT_ENV)
    configured = REPO_ROOT / (explicit or make_config().checkpoint_dir)
    try:
        load_run_config(configured)
    except CheckpointError:
        if explicit:
            raise
        print(f"No training run in {configured} (train with `python deepfake_detection.py`); "
              f"training a tiny demo run instead (about a minute), whose numbers mean nothing.")
        return demo_run()
    return configured


@functools.cache
def demo_run() -> Path:
    """Checkpoint dir of a tiny training run, with its ensemble, on demo data in a temporary folder that lives
    as long as the kernel (its checkpoints take about 350 MB)."""
    from .submission import run_ensemble
    from .pipeline import run

    root = Path(tempfile.mkdtemp(prefix="deepfake-notebook-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    demo = build_demo_dataset(root / "demo", **DEMO_RUN_IMAGES)
    config = make_config("tiny", data_dir=str(demo), generated_dir=str(root / "generated"),
                         checkpoint_dir=str(root / "checkpoints"), viz_dir=str(root / "visualizations"))
    run(config)
    run_ensemble(config.checkpoint_dir, output=root / "submission.json", device=config.device)
    return Path(config.checkpoint_dir)
