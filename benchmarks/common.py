"""Paths every benchmark shares: the repository, the challenge data beside it, and the benchmark runs."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "synergy25"  # the challenge's labelled and test images
RUNS = REPO / "benchmarks" / "runs"  # run folders (ignored by git): benchmark.py writes one per preset and seed
