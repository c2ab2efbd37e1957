"""A K-fold run's own files: each fold's folders, and the out-of-fold record the folds make together.

Each fold is a whole run (samples, both phases, evaluation) in ``fold_<i>/`` under the run's checkpoint,
samples and figures folders, so it resumes like one. The run folder itself holds what ``ensemble.py``
and ``predict.py`` need from all of them: every labelled image's OOF fake probability per model
(``oof.csv``), the OOF metrics with their intervals, the pooled frontier, and the report.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .checkpoints import CheckpointError, file_sha256
from .config import Config
from .data import SPLIT_NAME
from .folds import fold_digest, fold_dir, oof_metrics, pooled_frontier
from .io import atomic_path, read_json
from .metrics import classification_metrics
from .plots import plot_frontier
from .report import write_report
from .results import library_versions, load_results, machine_description, results_path, update_results

log = logging.getLogger(__name__)

OOF_NAME = "oof.csv"  # every labelled image's OOF fake probability per model, in the run folder


def fold_config(config: Config, fold: int) -> Config:
    """The run's config for one fold: its checkpoints, samples and figures in their own ``fold_<i>`` folders."""
    return replace(config, checkpoint_dir=str(fold_dir(config.checkpoint_dir, fold)),
                   generated_dir=str(fold_dir(config.generated_dir, fold)), viz_dir=str(fold_dir(config.viz_dir, fold)))


def fold_checkpoints(root: str | Path, name: str, folds: int) -> list[Path]:
    """A model's final checkpoint in each fold, found under the run folder wherever it now lives."""
    return [fold_dir(root, fold) / f"{name}_final.pt" for fold in range(folds)]


def pool_folds(config: Config, device: torch.device) -> dict:
    """Gather the folds into the run folder: the OOF table and metrics of every model that finished in every fold,
    the pooled frontier, the summed timings and the report; returns the run's results."""
    root, k = Path(config.checkpoint_dir), config.folds
    folds = [load_results(results_path(fold_dir(root, fold))) for fold in range(k)]
    names = [name for name in config.models if all(
        "final" in f.get("models", {}).get(name, {}).get("checkpoints", {}) and name in f.get("frontier", {}).get(
            "members", {}) for f in folds)]
    for name in [n for n in config.models if n not in names and any(n in f.get("models", {}) for f in folds)]:
        log.warning("%s did not finish in every fold; left out of the out-of-fold record (rerun the same command to "
                    "retrain it)", name)
    if not names:
        raise CheckpointError(f"no model finished in all {k} folds of {root}: rerun the same command to resume")
    splits = [read_json(fold_dir(root, fold) / SPLIT_NAME)["val"] for fold in range(k)]
    frontiers = [f["frontier"] for f in folds]
    table = pd.DataFrame({
        "path": [p for split in splits for p in split["paths"]],
        "label": [label for split in splits for label in split["labels"]],
        "fold": [fold for fold, split in enumerate(splits) for _ in split["paths"]],
    })
    for name in names:
        table[f"proba_{name}"] = np.concatenate([f["val"]["fake_proba"][name] for f in frontiers])
    with atomic_path(root / OOF_NAME) as tmp:
        table.to_csv(tmp, index=False)
    labels = table["label"].to_numpy()
    files = {name: fold_checkpoints(root, name, k) for name in names}
    members = {name: {"checkpoint": str(root), "folds": [str(p) for p in paths],
                      "sha256": fold_digest([file_sha256(p) for p in paths])} for name, paths in files.items()}
    same_members = all(set(f["members"]) == set(names) for f in frontiers)
    if not same_members:
        log.warning("the folds' ensembles hold different models, so their frontiers cannot be pooled: ensemble.py "
                    "needs --weights until every model finishes in every fold")
    record = {
        "k": k, "oof_file": OOF_NAME, "n_images": len(table), "fold_dirs": [str(fold_dir(root, f)) for f in range(k)],
        "models": {name: {"oof": oof_metrics(labels, table[f"proba_{name}"].to_numpy(), seed=config.seed),
                          "fold_accuracy": [classification_metrics(
                              np.asarray(split["labels"]), np.asarray(f["val"]["fake_proba"][name]))["accuracy"]
                              for split, f in zip(splits, frontiers)]}
                   for name in names},
    }
    timings: dict[str, float] = {}
    for f in folds:
        for stage, seconds in f.get("timings", {}).items():
            timings[stage] = timings.get(stage, 0.0) + seconds
    first = folds[0]["data"]

    def record_run(results: dict) -> None:
        results.update(
            config=config.to_dict(), seed=config.seed, versions=library_versions(), device=str(device),
            machine=machine_description(), started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            timings=timings, folds=record,
            data={"data_dir": first["data_dir"], "test_dir": first["test_dir"], "labels": first["labels"],
                  "counts": {"labelled": {c: int(sum(f["data"]["counts"]["val"][c] for f in folds))
                                          for c in ("real", "fake")}}},
        )
        if same_members:
            results["frontier"] = pooled_frontier(frontiers, members, config.seed)
        else:
            results.pop("frontier", None)

    results = update_results(results_path(root), record_run)
    for name, entry in record["models"].items():
        oof = entry["oof"]
        log.info("%s out of fold: accuracy %.4f [%.4f, %.4f] over %d images", name, oof["accuracy"],
                 *oof["accuracy_ci"], len(table))
    plot_frontier(results, config.viz_dir)
    write_report(results, config.viz_dir)
    return results
