"""How an ensemble weighs its members and where it cuts: an operating point of their accuracy-robustness frontier.

The weights are an operating point of the members' frontier (deepfake/frontier.py), ``balanced`` by default: a
brittle member that outweighs the cut flips any call under attack, so weights chosen for accuracy alone give
away robustness nobody chose to give away; ``--weights`` weighs by validation scores instead. A cut chosen on
validation corrects a lean the members share (towards "fake" in the benchmark runs). ``ensemble.py`` submits
and ``predict.py`` calls images with the same members, weights and cut (:func:`load_ensemble`). A k-fold run's
members average their fold models, weighed and cut out of fold; several runs (``--checkpoint-dir`` repeated)
average each architecture's models, each scored only on images it never trained on.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import OPERATING_POINTS, WEIGHT_SCHEMES, Config
from .cut import choose_threshold, weighted_fake_proba
from .data import SPLIT_NAME, load_validation, read_split_meta
from .evaluate import corrupted_sets, evaluation_sample
from .frontier import choose_point, frontier_of, is_current
from .io import read_json
from .members import (EnsembleError, Member, explicit_members, fold_members, load_models, member_probs, oof_table,
                      oof_columns, run_members, trained_on_this_split, validation_probs)
from .metrics import classification_metrics
from .results import load_results, load_run_config, results_path, update_results
from .runtime import setup_runtime

log = logging.getLogger(__name__)

LOGODDS_CAP = math.log(999)  # a member perfect on validation counts as 99.9% accurate, not infinitely


def ensemble_weights(val_metrics: dict[str, dict], scheme: str = "accuracy") -> dict[str, float]:
    """One weight per model, summing to 1: equal, or proportional to its validation accuracy, ROC-AUC or the
    log-odds of its accuracy, log(a / (1 - a)): the optimal weight of independent voters, which gives a strong
    member much more say than a weak one and a member at or below chance none."""
    if scheme not in WEIGHT_SCHEMES:
        raise EnsembleError(f"unknown weight scheme {scheme!r}; choose one of {', '.join(WEIGHT_SCHEMES)}")
    if not val_metrics:
        raise EnsembleError("no models to weigh")
    if scheme == "equal":
        scores = {name: 1.0 for name in val_metrics}
    else:
        scores = {name: metrics.get("accuracy" if scheme == "logodds" else scheme)
                  for name, metrics in val_metrics.items()}
        missing = [name for name, score in scores.items() if score is None]
        if missing:
            raise EnsembleError(f"no validation {scheme} recorded for {', '.join(missing)}; use --weights equal")
        if scheme == "logodds":
            scores = {name: 0.0 if a <= 0.5 else math.log(a / (1 - a)) if a < 1 else LOGODDS_CAP
                      for name, a in scores.items()}
    total = float(sum(scores.values()))
    if total <= 0:
        raise EnsembleError(f"every model has validation {scheme} 0; use --weights equal")
    return {name: float(score) / total for name, score in scores.items()}


def better_single(single: dict[str, dict], ensemble_accuracy: float) -> str | None:
    """The member whose validation accuracy beats the ensemble's, if one does.

    A weak member can pull the average below the strongest one; the competitor should hear so when it
    happens, with the fix. Single models are scored at 0.5, a cut chosen on nothing, so pass the ensemble's
    accuracy with its cut chosen on other folds where there is one.
    """
    if len(single) < 2:
        return None
    name = max(single, key=lambda n: single[n]["accuracy"])
    return name if single[name]["accuracy"] > ensemble_accuracy else None


@dataclass
class Ensemble:
    """A training run's members loaded, weighed and cut on its validation split.

    ``ensemble.py`` submits with it and ``predict.py`` calls images with it, so both give an image the
    same probability and the same call.
    """

    config: Config
    device: torch.device
    results: dict
    members: list[Member]
    models: dict[str, nn.Module]
    scheme: str | None  # --weights, when it (not an operating point) set the weights
    operating_point: dict | None  # the frontier point the weights come from, with its validation figures
    weights: dict[str, float]
    threshold: float
    threshold_from: str  # "validation" or "--threshold"
    val_labels: np.ndarray
    val_member_probs: dict[str, np.ndarray]
    val_probs: np.ndarray  # the ensemble's fake probability per validation image

    def predict(self, images: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Each member's and the ensemble's fake probability per image (uint8 NHWC)."""
        probs = member_probs(self.models, images, self.config, self.device)
        return probs, weighted_fake_proba(probs, self.weights)


def load_ensemble(
    checkpoint_dir: str | Path | list[str | Path] = "checkpoints",
    *,
    operating_point: str | None = None,
    min_clean: float | None = None,
    scheme: str | None = None,
    threshold: float | None = None,
    checkpoints: list[str | Path] | None = None,
    device: str = "auto",
) -> Ensemble:
    """load run -> weigh -> cut: the members (every final checkpoint, or ``checkpoints``), their weights and
    the cut, as the submission uses them.

    The weights are an operating point of the members' frontier (default ``balanced``; ``min_clean`` a floor on
    its clean validation accuracy), or ``scheme``'s. ``threshold`` None: the cut is chosen on the validation
    split (:func:`choose_threshold`). A missing run or split and a broken checkpoint fail here, before any
    other image is read.
    """
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise EnsembleError(f"--threshold {threshold} is not a probability strictly between 0 and 1")
    dirs = run_dirs(checkpoint_dir)
    if len(dirs) > 1:
        if operating_point is not None or min_clean is not None or checkpoints:
            raise EnsembleError("several --checkpoint-dir runs are weighed by --weights (default accuracy): a "
                                "frontier, --operating-point, --min-clean and --checkpoints belong to one run")
        return _merged_runs(dirs, scheme or "accuracy", threshold, device)
    checkpoint_dir = dirs[0]
    if scheme is not None and (operating_point is not None or min_clean is not None):
        raise EnsembleError("--weights sets the weights itself, so --operating-point and --min-clean do not apply: "
                            "pass one or the other")
    if min_clean is not None and not 0.0 <= min_clean <= 1.0:
        raise EnsembleError(f"--min-clean {min_clean} is not an accuracy between 0 and 1")
    operating_point = None if scheme is not None else operating_point or OPERATING_POINTS[0]

    # Load run
    config = load_run_config(checkpoint_dir)
    config.device = device
    torch_device = setup_runtime(config)
    results = load_results(results_path(checkpoint_dir))
    split_file = checkpoint_dir / SPLIT_NAME
    if config.folds:
        if checkpoints:
            raise EnsembleError(f"{checkpoint_dir} is a {config.folds}-fold run, whose members average their fold "
                                f"models: --checkpoints does not apply (choose with --operating-point or --weights)")
        members = fold_members(results, checkpoint_dir)
    else:
        members = (explicit_members([Path(c) for c in checkpoints]) if checkpoints
                   else run_members(results, checkpoint_dir))
        members = trained_on_this_split(members, split_file, read_split_meta(split_file).get("data_id"),
                                        explicit=bool(checkpoints))

    # Weigh
    point = None
    if operating_point is None:
        weights = ensemble_weights({m.name: m.val_metrics for m in members}, scheme)
    else:
        frontier = members_frontier(members, results, checkpoint_dir, config, torch_device, store=not checkpoints)
        point = {"name": operating_point, "min_clean": min_clean,
                 **choose_point(frontier["points"], frontier["n_sample"], operating_point, min_clean)}
        named = next((o for o in frontier["operating_points"].values()
                      if frontier["points"][o["point"]]["weights"] == point["weights"]), {})
        point.update({k: v for k, v in named.items() if k != "point"})  # its attacks at 2/255 and by APGD-CE
        weights = point["weights"]
        members = [m for m in members if weights[m.name] > 0]
        weights = {m.name: weights[m.name] for m in members}
    for member in members:
        log.info("ensemble member %s: weight %.4f (%s) <- %s", member.name, weights[member.name],
                 scheme or f"operating point {operating_point}", member.checkpoint)

    # Cut
    models = load_models(members, torch_device)
    val_labels, val_member_probs = validation_probs(members, models, results, split_file, config, torch_device)
    val_probs = weighted_fake_proba(val_member_probs, weights)
    chosen = threshold is None
    return Ensemble(
        config=config, device=torch_device, results=results, members=members, models=models, scheme=scheme,
        operating_point=point, weights=weights,
        threshold=choose_threshold(val_labels, val_probs) if chosen else float(threshold),
        threshold_from="validation" if chosen else "--threshold", val_labels=val_labels,
        val_member_probs=val_member_probs,
        val_probs=val_probs,
    )


@dataclass
class _RunScores:
    """One run of a merged ensemble: its members, and the images they never trained on with their scores."""

    config: Config
    device: torch.device
    results: dict
    members: list[Member]
    paths: list[str]  # the validation images (a k-fold run: every OOF image), as the run recorded them
    labels: np.ndarray
    probs: dict[str, np.ndarray]  # each member's fake probability of each of them


def run_dirs(checkpoint_dir: str | Path | list[str | Path]) -> list[Path]:
    """The run folders ``--checkpoint-dir`` named: one, or several to average."""
    return [Path(d) for d in checkpoint_dir] if isinstance(checkpoint_dir, list) else [Path(checkpoint_dir)]


def _merged_runs(dirs: list[Path], scheme: str, threshold: float | None, device: str) -> Ensemble:
    """Several runs (seeds, or fold runs) as one ensemble: each architecture averages every run's models of it, and is
    scored on each validation image by the runs' models that never trained on it (a run's validation split, or a
    k-fold run's OOF images), averaged; the images some architecture has no such score for are left out."""
    if len(set(d.resolve() for d in dirs)) < len(dirs):
        raise EnsembleError("a run folder is listed twice in --checkpoint-dir; list each once")
    runs = [_run_scores(d, device) for d in dirs]
    first = runs[0]
    for run, folder in zip(runs[1:], dirs[1:]):
        if (run.config.image_size, run.config.tta_flip) != (first.config.image_size, first.config.tta_flip):
            raise EnsembleError(f"{folder} reads images at another size or flip TTA than {dirs[0]}: average runs of "
                                f"one recipe")
    names = list(dict.fromkeys(m.name for run in runs for m in run.members))
    labels: dict[str, int] = {}
    scored: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    for run, folder in zip(runs, dirs):
        for path, label in zip(run.paths, run.labels):
            if labels.setdefault(path, int(label)) != label:
                raise EnsembleError(f"{path} is labelled differently in {folder} than in another run: average runs "
                                    f"trained on the same labels")
        for name, values in run.probs.items():
            for path, value in zip(run.paths, values):
                scored[name].setdefault(path, []).append(float(value))
    images = [path for path in labels if all(path in scored[name] for name in names)]
    val_labels = np.array([labels[path] for path in images], dtype=np.int64)
    if len(np.unique(val_labels)) < 2:
        raise EnsembleError(f"the runs in {', '.join(map(str, dirs))} share too few images that every model of them "
                            f"was validated on: average runs of the same data and models")
    val_member_probs = {name: np.array([np.mean(scored[name][path]) for path in images], dtype=np.float32)
                        for name in names}
    files = {name: tuple(p for run in runs for m in run.members if m.name == name for p in (m.folds or (m.checkpoint,)))
             for name in names}
    members = [Member(name, dirs[0], classification_metrics(val_labels, val_member_probs[name]), None, files[name])
               for name in names]
    weights = ensemble_weights({m.name: m.val_metrics for m in members}, scheme)
    for member in members:
        log.info("ensemble member %s: weight %.4f (%s), the average of %d models from %d runs", member.name,
                 weights[member.name], scheme, len(member.folds), len(dirs))
    val_probs = weighted_fake_proba(val_member_probs, weights)
    return Ensemble(
        config=first.config, device=first.device, results=first.results, members=members,
        models=load_models(members, first.device), scheme=scheme, operating_point=None, weights=weights,
        threshold=choose_threshold(val_labels, val_probs) if threshold is None else float(threshold),
        threshold_from="validation" if threshold is None else "--threshold", val_labels=val_labels,
        val_member_probs=val_member_probs, val_probs=val_probs,
    )


def _run_scores(checkpoint_dir: Path, device: str) -> _RunScores:
    """One run's members and the images they never trained on, as a merged ensemble scores them."""
    config = load_run_config(checkpoint_dir)
    config.device = device
    torch_device = setup_runtime(config)
    results = load_results(results_path(checkpoint_dir))
    if config.folds:
        members = fold_members(results, checkpoint_dir)
        table = oof_table(checkpoint_dir)
        paths, (labels, probs) = table["path"].tolist(), oof_columns(table, [m.name for m in members])
    else:
        split_file = checkpoint_dir / SPLIT_NAME
        members = trained_on_this_split(run_members(results, checkpoint_dir), split_file,
                                        read_split_meta(split_file).get("data_id"), explicit=False)
        paths = read_json(split_file)["val"]["paths"]
        labels, probs = validation_probs(members, None, results, split_file, config, torch_device)
    return _RunScores(config, torch_device, results, members, paths, labels, probs)


def members_frontier(members: list[Member], results: dict, checkpoint_dir: Path, config: Config,
                     device: torch.device, store: bool) -> dict:
    """The frontier the evaluation measured for exactly these checkpoints, else measured now on the split's
    validation images (minutes: one PGD attack per weighting) and, with ``store``, kept in results.json."""
    if is_current(results.get("frontier"), {m.name: m.sha256 for m in members}):
        return results["frontier"]
    if config.folds:
        raise EnsembleError(f"{checkpoint_dir} holds no pooled frontier for these fold models: run `python "
                            f"deepfake_detection.py --evaluate-only --checkpoint-dir {checkpoint_dir}`, "
                            f"or pass --weights")
    log.info("results.json holds no frontier for these checkpoints; measuring it now")
    val, _ = load_validation(checkpoint_dir / SPLIT_NAME, config.image_size)
    sample = evaluation_sample(val.labels, config.eval_max_images, config.seed)
    corrupted = corrupted_sets(val.images[sample], config.corruption_severities, config.seed)
    frontier = frontier_of({m.name: m.checkpoint for m in members}, val, sample, corrupted, config, device)
    if store:
        results.update(update_results(results_path(checkpoint_dir), lambda r: r.update(frontier=frontier)))
    return frontier
