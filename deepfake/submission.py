"""The submission: the ensemble's calls on the test images, written with a meta file that traces them back.

load ensemble -> predict -> write. Every submission gets a meta file naming the exact checkpoints (sha256),
weights, operating point and cut behind it, and the ensemble is scored next to each single model on the run's
validation split, so a leaderboard score can be traced back to its models and checked against them.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from .cut import THRESHOLD, crossfit_accuracy
from .data import CLASS_NAMES, ImageSet, file_number, load_test
from .ensemble import better_single, load_ensemble, run_dirs
from .io import atomic_path, write_json
from .members import EnsembleError
from .metrics import classification_metrics
from .plots import plot_frontier, plot_models_overview
from .report import write_report
from .results import results_path, update_results

log = logging.getLogger(__name__)


def resolve_test_dir(test_dir: str | Path | None, results: dict) -> Path:
    """--test-dir, else the test/ folder of the data the run was trained on."""
    if test_dir is not None:
        return Path(test_dir)
    recorded = results.get("data", {}).get("test_dir")
    if recorded is None:
        data_dir = results.get("data", {}).get("data_dir", "the data folder")
        raise EnsembleError(f"the training run found no test/ folder in {data_dir}; pass --test-dir DIR")
    return Path(recorded)


def renumbered_files(test: ImageSet, indices: list[int]) -> dict[int, str] | None:
    """index -> file when the indices are not the numbers in the file names (see ``order_test_files``), else None."""
    if all(file_number(path) == index for path, index in zip(test.paths, indices)):
        return None
    return dict(zip(indices, test.paths))


def predicted_classes(fake_probs: np.ndarray, threshold: float = THRESHOLD) -> list[str]:
    return [CLASS_NAMES[int(p >= threshold)] for p in fake_probs]


def score(labels: np.ndarray, member_probs: dict[str, np.ndarray], ensemble_probs: np.ndarray,
          threshold: float) -> dict:
    """The ensemble's metrics (at its threshold) next to each single model's (at 0.5), on the same images."""
    return {
        "ensemble": classification_metrics(labels, ensemble_probs, threshold),
        "single": {name: classification_metrics(labels, p, THRESHOLD) for name, p in member_probs.items()},
    }


def submission_rows(indices: list[int], fake_probs: np.ndarray, threshold: float = THRESHOLD) -> list[dict]:
    """The competition format: one {"index", "prediction"} per test image, sorted by index."""
    if len(indices) != len(fake_probs):
        raise ValueError(f"{len(indices)} indices but {len(fake_probs)} probabilities")
    predictions = predicted_classes(fake_probs, threshold)
    order = sorted(range(len(indices)), key=lambda i: indices[i])
    return [{"index": int(indices[i]), "prediction": predictions[i]} for i in order]


def meta_path(output: Path) -> Path:
    """submission.json -> submission.meta.json, next to it."""
    return output.with_name(f"{output.stem}.meta.json")


def probability_table(test: ImageSet, indices: list[int], member_probs: dict[str, np.ndarray],
                      ensemble_probs: np.ndarray, threshold: float) -> pd.DataFrame:
    """Per image (in submission order): index, file, each member's and the ensemble's fake probability."""
    table = pd.DataFrame({"index": indices, "file": test.paths})
    for name, probs in member_probs.items():
        table[f"proba_{name}"] = probs
    table["proba_ensemble"] = ensemble_probs
    table["prediction"] = predicted_classes(ensemble_probs, threshold)
    if _is_labelled(test):
        table["label"] = [CLASS_NAMES[label] for label in test.labels]
    return table.sort_values("index", kind="stable")


def _is_labelled(images: ImageSet) -> bool:
    return len(images) > 0 and bool((images.labels >= 0).all())


def run_ensemble(
    checkpoint_dir: str | Path | list[str | Path] = "checkpoints",
    *,
    test_dir: str | Path | None = None,
    output: str | Path = "submission.json",
    operating_point: str | None = None,
    min_clean: float | None = None,
    scheme: str | None = None,
    threshold: float | None = None,
    checkpoints: list[str | Path] | None = None,
    probabilities: str | Path | None = None,
    device: str = "auto",
) -> dict:
    """load run -> weigh -> predict -> write; returns the meta record written next to the submission.

    ``threshold`` None: the cut is chosen on the validation split (:func:`choose_threshold`).

    Everything that can fail on bad input (run, checkpoints, test images, split) fails before the
    first file is written, and each file is replaced atomically.
    """
    started = time.perf_counter()
    output = Path(output)
    ensemble = load_ensemble(checkpoint_dir, operating_point=operating_point, min_clean=min_clean, scheme=scheme,
                             threshold=threshold, checkpoints=checkpoints, device=device)
    config, members, weights, val_labels = ensemble.config, ensemble.members, ensemble.weights, ensemble.val_labels
    threshold, val_probs = ensemble.threshold, ensemble.val_probs

    # Predict
    test_dir = resolve_test_dir(test_dir, ensemble.results)
    test, indices = load_test(test_dir, config.image_size)
    test_member_probs, test_probs = ensemble.predict(test.images)
    chosen = ensemble.threshold_from == "validation"
    val_scores = score(val_labels, ensemble.val_member_probs, val_probs, threshold)
    threshold_check = {
        "val_accuracy_at_0.5": classification_metrics(val_labels, val_probs, THRESHOLD)["accuracy"],
        "val_accuracy_crossfit": crossfit_accuracy(val_labels, val_probs) if chosen else None,
    }
    test_scores = score(test.labels, test_member_probs, test_probs, threshold) if _is_labelled(test) else None
    crossfit = threshold_check["val_accuracy_crossfit"]
    honest = val_scores["ensemble"]["accuracy"] if crossfit is None else crossfit
    stronger = None if config.folds else better_single(val_scores["single"], honest)  # --checkpoints: no fold run

    # Write
    rows = submission_rows(indices, test_probs, threshold)
    meta = {
        "submission": str(output),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "scheme": scheme,
        "operating_point": ensemble.operating_point,
        "threshold": threshold,
        "threshold_from": ensemble.threshold_from,
        "threshold_check": threshold_check,
        "members": [
            {"name": m.name, "checkpoint": str(m.checkpoint), "sha256": m.sha256,
             "weight": weights[m.name], "val_metrics": m.val_metrics,
             **({"folds": [str(p) for p in m.folds]} if m.folds else {})}
            for m in members
        ],
        "test_dir": str(test_dir),
        "n_images": len(test),
        "predicted": {name: sum(row["prediction"] == name for row in rows) for name in CLASS_NAMES},
        "renumbered_files": renumbered_files(test, indices),
        "probabilities": None if probabilities is None else str(probabilities),
        "device": str(ensemble.device),
        "tta_flip": config.tta_flip,
        "n_val": len(val_labels),
        "validation": "out of fold" if config.folds else "validation split",
        "val": val_scores,
        "better_single": None if stronger is None else {
            "name": stronger, "checkpoint": str(next(m.checkpoint for m in members if m.name == stronger)),
            "val_accuracy": val_scores["single"][stronger]["accuracy"], "ensemble_val_accuracy": honest,
        },
        "test": test_scores,
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(output, rows)
    write_json(meta_path(output), meta)
    if probabilities is not None:
        with atomic_path(probabilities) as tmp:
            probability_table(test, indices, test_member_probs, test_probs, threshold).to_csv(tmp, index=False)
    _log_outcome(meta)
    dirs = run_dirs(checkpoint_dir)
    if len(dirs) == 1:  # several runs: no one run's record
        record_ensemble(dirs[0], config.viz_dir, meta)
    return meta


def record_ensemble(checkpoint_dir: Path, viz_dir: str | Path, meta: dict) -> None:
    """Add the ensemble to results.json, then redraw the overview figure and the report from it."""
    entry = {
        "scheme": meta["scheme"],
        "operating_point": meta["operating_point"],
        "threshold": meta["threshold"],
        "threshold_from": meta["threshold_from"],
        "members": {m["name"]: {"checkpoint": m["checkpoint"], "weight": m["weight"]} for m in meta["members"]},
        "val": meta["val"]["ensemble"],
        "threshold_check": meta["threshold_check"],
        "single": meta["val"]["single"],
        "better_single": meta["better_single"],
        "n_val": meta["n_val"],
        "validation": meta["validation"],
        **({"test": meta["test"]} if meta["test"] else {}),
        "submission": meta["submission"],
        "created": meta["created"],
    }
    results = update_results(results_path(checkpoint_dir), lambda r: r.update(ensemble=entry))
    plot_frontier(results, viz_dir)
    if results.get("models"):  # a k-fold run's folder holds no single model's evaluation: its folds' do
        plot_models_overview(results, viz_dir)
    write_report(results, viz_dir)


def _log_outcome(meta: dict) -> None:
    output = Path(meta["submission"])
    if meta["renumbered_files"]:
        log.warning("indices are not the file numbers: the index -> file mapping is in %s",
                    " and ".join(str(p) for p in (meta_path(output), meta["probabilities"]) if p is not None))
    log.info("wrote %s (%d images: %d real, %d fake) and %s", output, meta["n_images"], meta["predicted"]["real"],
             meta["predicted"]["fake"], meta_path(output))
    check = meta["threshold_check"]
    crossfit = check["val_accuracy_crossfit"]
    log.info("ensemble threshold %.4f (%s); validation accuracy at 0.5: %.4f%s", meta["threshold"],
             meta["threshold_from"], check["val_accuracy_at_0.5"],
             "" if crossfit is None else f", with the cut chosen on the other folds: {crossfit:.4f}")
    better = meta["better_single"]
    if better:
        log.warning("on validation %s alone (accuracy %.4f) beats this ensemble (%.4f): `python ensemble.py "
                    "--checkpoints %s` submits it", better["name"], better["val_accuracy"],
                    better["ensemble_val_accuracy"], better["checkpoint"])
    for split, label in (("val", "validation"), ("test", "labelled test")):
        if meta[split]:
            for name, metrics in {"ensemble": meta[split]["ensemble"], **meta[split]["single"]}.items():
                auc = "n/a" if metrics["auc"] is None else f"{metrics['auc']:.4f}"
                log.info("%s %s: accuracy %.4f, F1 %.4f, AUC %s", label, name, metrics["accuracy"], metrics["f1"], auc)
