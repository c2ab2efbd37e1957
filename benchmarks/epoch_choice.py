"""Which base-training weights to keep: the epoch best on validation, the last one, or the mean of the last N.

    python -m benchmarks.epoch_choice --model resnet_se --seeds 42 43 44 45
    python -m benchmarks.epoch_choice --table

Trains phase 1 of the ``full`` recipe on the split that ``benchmarks/benchmark.py --preset full`` made
inside its pipeline part (as ``benchmarks/levers.py`` does), every epoch run (no early stopping) and the
last ``--average`` epochs' weights averaged, once per initialisation seed, keeping each epoch's
validation probabilities. The epoch best on all the validation images flatters itself: it is chosen on
the images that then score it. So the table also scores that choice cross-fitted, as the epoch best on
three quarters of the validation images scored on the other quarter, over every fold of 50 seeded
stratified 4-fold splits. The last epoch and the average make no choice on validation and are scored as
they are. Records go to benchmarks/epoch_choice.jsonl; ``--table`` writes benchmarks/EPOCH_CHOICE.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
from sklearn.model_selection import RepeatedStratifiedKFold

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import REPO
from benchmarks.levers import RUN_DIR, levers_data
from deepfake.config import MODEL_NAMES, make_config
from deepfake.inference import predict_fake_proba
from deepfake.io import write_text
from deepfake.metrics import classification_metrics
from deepfake.models import build_from_config
from deepfake.results import machine_description
from deepfake.runtime import seed_everything, setup_runtime
from deepfake.train import base_settings, train_phase

RECORDS = REPO / "benchmarks" / "epoch_choice.jsonl"
TABLE = REPO / "benchmarks" / "EPOCH_CHOICE.md"
FOLDS, REPEATS = 4, 50


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet_se", choices=MODEL_NAMES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45])
    parser.add_argument("--average", type=int, default=10, metavar="N", help="average the last N epochs' weights")
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR)
    parser.add_argument("--table", action="store_true", help="only rewrite EPOCH_CHOICE.md from the records")
    args = parser.parse_args()
    if not args.table:
        for seed in args.seeds:
            record = measure(args.model, seed, args.average, args.run_dir)
            with RECORDS.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
    write_text(TABLE, table([json.loads(line) for line in RECORDS.read_text().splitlines() if line.strip()]))
    print(f"wrote {TABLE}")
    return 0


def measure(model_name: str, seed: int, average: int, run_dir: Path) -> dict:
    """One phase-1 run: every epoch's validation probabilities and the averaged weights' ones."""
    config = make_config("full", seed=seed, average_epochs=average)
    device = setup_runtime(config)
    _, pool, val = levers_data(config, run_dir)
    epoch_probs: list[list[float]] = []
    seed_everything(config.seed)
    model = build_from_config(model_name, config).to(device)
    started = time.perf_counter()
    result = train_phase(model, pool, val, config, base_settings(config, model_name), device, label=model_name,
                         on_epoch=lambda _epoch, _model, probs: epoch_probs.append(_rounded(probs)))
    return {
        "model": model_name, "seed": seed, "average": average, "date": date.today().isoformat(),
        "config": config.training_values(model_name), "labels": val.labels.tolist(),
        "epoch_probs": epoch_probs, "average_probs": _rounded(predict_fake_proba(model, val.images, device=device)),
        "seconds": round(time.perf_counter() - started), "machine": machine_description(),
        "average_val_acc": result.val_metrics["accuracy"],  # what the pipeline records for these weights
    }


def _rounded(probs: np.ndarray) -> list[float]:
    return [round(float(p), 5) for p in probs]


def scores(record: dict) -> dict[str, float]:
    """Validation accuracy of each way of keeping weights; only the flattered one chooses on its own images."""
    labels, epochs = np.array(record["labels"]), np.array(record["epoch_probs"])
    calls = (epochs >= 0.5) == labels  # epoch x image: right or wrong

    def best_epoch(images: np.ndarray) -> int:  # the pipeline's rule: accuracy, AUC breaks ties, earliest wins
        keys = [(calls[e, images].mean(), classification_metrics(labels[images], epochs[e, images])["auc"])
                for e in range(len(epochs))]
        return max(range(len(epochs)), key=lambda e: (keys[e], -e))

    right = total = 0
    splitter = RepeatedStratifiedKFold(n_splits=FOLDS, n_repeats=REPEATS, random_state=0)
    for choose, score in splitter.split(np.zeros(len(labels)), labels):
        right += calls[best_epoch(choose), score].sum()
        total += len(score)
    everything = np.arange(len(labels))
    return {
        "best epoch, chosen on these images": calls[best_epoch(everything)].mean(),
        "best epoch, cross-fitted": right / total,
        "last epoch": calls[-1].mean(),
        f"mean of the last {record['average']} epochs": ((np.array(record["average_probs"]) >= 0.5) == labels).mean(),
    }


def table(records: list[dict]) -> str:
    latest = {(r["model"], r["seed"], r["average"]): r for r in records}  # a rerun replaces its row
    lines = [
        "# Which base-training weights to keep", "",
        "Written by `python -m benchmarks.epoch_choice --table` from `benchmarks/epoch_choice.jsonl`; each row by "
        "`python -m benchmarks.epoch_choice --model MODEL --seeds SEED` (see its docstring). Phase 1 of the `full` "
        "recipe, every epoch run, on the pipeline split of `benchmarks/benchmark.py --preset full` "
        f"({len(next(iter(latest.values()))['labels'])} validation images); validation accuracy in %. "
        f"Cross-fitted: the epoch best on {FOLDS - 1} of {FOLDS} folds, scored on the fourth, over {REPEATS} "
        "seeded stratified splits. Machine of the last row: "
        f"{records[-1]['machine']}.", "",
    ]
    for model, average in dict.fromkeys((m, n) for m, _, n in latest):
        rows = [(seed, scores(r)) for (m, seed, n), r in latest.items() if (m, n) == (model, average)]
        names = list(rows[0][1])
        lines += [f"## {model}", "", "| seed | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
        lines += [f"| {seed} | " + " | ".join(f"{100 * v:.1f}" for v in s.values()) + " |" for seed, s in rows]
        means = [np.mean([s[name] for _, s in rows]) for name in names]
        lines += ["| mean | " + " | ".join(f"{100 * v:.1f}" for v in means) + " |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
