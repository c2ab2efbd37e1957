"""Paths every benchmark shares: the repository, the challenge data beside it, and the benchmark runs; and the
lines every benchmark report opens with."""
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from deepfake.results import machine_description

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "synergy25"  # the challenge's labelled and test images
RUNS = REPO / "benchmarks" / "runs"  # run folders (ignored by git): benchmark.py writes one per preset and seed


def report_stamp() -> str:
    """A report's date line: when, on what machine, with which torch and Python."""
    return (f"- Date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}; machine: {machine_description()}; "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def command_as_typed(module: str) -> str:
    """``python -m benchmarks.<module>`` with the arguments this process was given."""
    return " ".join([f"python -m benchmarks.{module}", *sys.argv[1:]])
