"""Shared fixtures: a seconds-long config, the embedded demo data, and the real data when present."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tiny models gain nothing from threads, and on a busy 2-core machine extra threads only wait on each other.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "synergy25"


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "train").is_dir():
        pytest.skip(f"competition data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    from deepfake.demo_data import build_demo_dataset

    return build_demo_dataset(tmp_path_factory.mktemp("demo"), per_class=60, test_count=20, seed=0)


@pytest.fixture
def tiny_config(tmp_path, demo_dir):
    return run_config(tmp_path, demo_dir)


def run_config(root: Path, data_dir: Path, **overrides):
    """A tiny-preset config with every output under ``root``, training in float32: ``auto`` would pick bfloat16 on
    a CPU that computes it natively, and the tests must pass the same on every host."""
    from deepfake.config import make_config

    return make_config(
        "tiny", data_dir=str(data_dir), generated_dir=str(root / "generated"),
        checkpoint_dir=str(root / "checkpoints"), viz_dir=str(root / "visualizations"), device="cpu",
        **{"precision": "fp32", **overrides},
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, demo_dir):
    """One finished pipeline run (all three models, both phases, evaluation) shared by read-only tests."""
    from deepfake.pipeline import run

    config = run_config(tmp_path_factory.mktemp("tiny_run"), demo_dir)
    run(config)
    return config


@pytest.fixture
def run_dir(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny run's results and split, as a competitor would copy it; its checkpoints are
    shared and only read, and its figures go to the copy's visualizations/ (see the ensemble's test of this)."""
    from deepfake.results import results_path

    source = Path(tiny_run.checkpoint_dir)
    target = tmp_path / "checkpoints"
    target.mkdir()
    for name in ("split.json", results_path(source).name):
        shutil.copy(source / name, target / name)
    return target
