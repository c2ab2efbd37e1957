"""What each way of combining a run's models scores on that run's validation split, clean and corrupted.

    python -m benchmarks.ensemble_schemes                      # the `full` benchmark runs, seeds 42 and 43
    python -m benchmarks.ensemble_schemes benchmarks/runs/quick

The issue's lever "ensemble weighting and thresholds chosen on validation only", measured where the
choice may be made: for every weighting ``ensemble.py --weights`` offers, and for each model alone (what
``ensemble.py --checkpoints FILE`` submits), the validation accuracy at the cut ``ensemble.py`` would
choose, the same with each image called at a cut chosen on the other folds (the honest figure), and the
accuracy under the benchmark's JPEG, noise and blur at the chosen cut. Runs are the folders that
``benchmarks/benchmark.py`` leaves under ``benchmarks/runs/``; no unseen image is read. Writes
benchmarks/ENSEMBLE_SCHEMES.md.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.benchmark import CORRUPTIONS
from benchmarks.common import REPO, command_as_typed, report_stamp
from deepfake.checkpoints import load_checkpoint
from deepfake.config import WEIGHT_SCHEMES
from deepfake.corruptions import apply_corruption
from deepfake.data import SPLIT_NAME, load_validation
from deepfake.cut import choose_threshold, crossfit_accuracy, weighted_fake_proba
from deepfake.ensemble import ensemble_weights
from deepfake.members import run_members
from deepfake.errors import DeepfakeError, report_errors
from deepfake.inference import predict_fake_proba
from deepfake.io import write_text
from deepfake.metrics import classification_metrics
from deepfake.results import load_results, results_path

DEFAULT_RUNS = ("benchmarks/runs/full", "benchmarks/runs/full-seed43")
OUTPUT = REPO / "benchmarks" / "ENSEMBLE_SCHEMES.md"
CONDITIONS = ("clean", *CORRUPTIONS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", default=list(DEFAULT_RUNS), help="benchmark run folders")
    args = parser.parse_args()
    command = command_as_typed("ensemble_schemes")
    return report_errors(lambda: write_report(args.runs, command))


def write_report(runs: list[str], command: str) -> None:
    lines = [
        "# Ensemble weightings on validation\n",
        report_stamp(),
        f"- Command: `{command}`",
        "- Each run's own validation split (never the unseen part). Cut: the fake-probability cut with the best "
        "validation accuracy, as `ensemble.py` chooses it. Cross-fit: each image called at a cut chosen on the "
        "other 4/5 of the images, what the choice is worth on images it did not see. JPEG q40, noise 0.08 and "
        "blur 1.0: accuracy on corrupted copies of the validation images, at the chosen cut.\n",
    ]
    for run in map(Path, runs):
        lines += [f"## `{run.as_posix()}`\n", *scheme_table(run), ""]
    write_text(OUTPUT, "\n".join(lines))
    print(f"wrote {OUTPUT}")


def scheme_table(run: Path) -> list[str]:
    """One row per single model and per weighting of all of them."""
    checkpoints = run / "checkpoints"
    if not results_path(checkpoints).exists():
        raise DeepfakeError(f"no benchmark run in {run}: make it with `python -m benchmarks.benchmark --preset full` "
                            "(add `--train-seed 43` for benchmarks/runs/full-seed43), or name another run folder")
    results = load_results(results_path(checkpoints))
    val, _ = load_validation(checkpoints / SPLIT_NAME)
    tta = bool(results["config"].get("tta_flip"))
    members = run_members(results, checkpoints)
    metrics = {member.name: member.val_metrics for member in members}
    images = {c: val.images if c == "clean" else apply_corruption(val.images, *CORRUPTIONS[c], seed=0)
              for c in CONDITIONS}
    probs = {condition: {} for condition in CONDITIONS}
    for member in members:
        model = load_checkpoint(member.checkpoint)
        for condition in CONDITIONS:
            probs[condition][member.name] = predict_fake_proba(model, images[condition], tta_flip=tta)
    candidates = {f"{name} alone": {n: float(n == name) for n in metrics} for name in metrics}
    candidates |= {f"all, `--weights {scheme}`": ensemble_weights(metrics, scheme) for scheme in WEIGHT_SCHEMES}
    rows = ["| members | weights | cut | val acc at cut | cross-fit | JPEG q40 | noise 0.08 | blur 1.0 |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for label, weights in candidates.items():
        combined = {c: weighted_fake_proba(probs[c], weights) for c in CONDITIONS}
        cut = choose_threshold(val.labels, combined["clean"])
        accuracy = {c: classification_metrics(val.labels, combined[c], cut)["accuracy"] for c in CONDITIONS}
        shown = ", ".join(f"{n} {w:.2f}" for n, w in weights.items() if w > 0)
        rows.append(f"| {label} | {shown} | {cut:.3f} | {percent(accuracy['clean'])} | "
                    f"{percent(crossfit_accuracy(val.labels, combined['clean']))} | "
                    + " | ".join(percent(accuracy[c]) for c in CORRUPTIONS) + " |")
    return [f"{len(val)} validation images; validation accuracy recorded by the run: "
            + ", ".join(f"{n} {percent(m['accuracy'])}" for n, m in metrics.items()) + ".\n", *rows]


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


if __name__ == "__main__":
    sys.exit(main())
