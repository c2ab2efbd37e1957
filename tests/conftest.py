"""Shared fixtures: a seconds-long config, the embedded demo data, and the real data when present."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
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
    from deepfake.config import make_config

    return make_config(
        "tiny",
        data_dir=str(demo_dir),
        generated_dir=str(tmp_path / "generated"),
        checkpoint_dir=str(tmp_path / "checkpoints"),
        viz_dir=str(tmp_path / "visualizations"),
        device="cpu",
    )
