"""The submission: a weighted average of the trained detectors' fake probabilities, cut where validation says.

load run -> weigh -> predict -> write. The weights are an operating point of the members' accuracy-robustness
frontier (deepfake/frontier.py), ``balanced`` by default: a brittle member that outweighs the cut flips any call
under attack, so weights chosen for accuracy alone give away robustness nobody chose to give away;
``--weights`` weighs by validation scores instead. A cut chosen on validation corrects a lean the members
share (towards "fake" in the benchmark runs). ``predict.py`` calls any image with the same members, weights
and cut (:func:`load_ensemble`). A k-fold run's members average their fold models, weighed and cut out of
fold; several runs (``--checkpoint-dir`` repeated) average each architecture's models, each scored only on
images it never trained on. Every submission gets a meta file naming the exact checkpoints (sha256),
weights, operating point and cut behind it, and the ensemble is scored next to each single model on the
run's validation split, so a leaderboard score can be traced back to its models and checked against them.
"""
from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .checkpoints import file_sha256, load_checkpoint, read_checkpoint
from .config import OPERATING_POINTS, WEIGHT_SCHEMES, Config
from .cut import THRESHOLD, choose_threshold, crossfit_accuracy, weighted_fake_proba
from .data import CLASS_NAMES, SPLIT_NAME, ImageSet, file_number, load_test, load_validation, read_split_meta
from .errors import DeepfakeError
from .evaluate import corrupted_sets, evaluation_sample
from .fold_run import OOF_NAME, fold_checkpoints
from .folds import FoldAverage, fold_digest
from .frontier import choose_point, frontier_of, is_current, stored_validation
from .inference import predict_fake_proba
from .io import atomic_path, read_json, write_json
from .metrics import classification_metrics
from .plots import plot_frontier, plot_models_overview
from .report import write_report
from .results import load_results, load_run_config, results_path, update_results
from .runtime import setup_runtime

log = logging.getLogger(__name__)

LOGODDS_CAP = math.log(999)  # a member perfect on validation counts as 99.9% accurate, not infinitely
TRAIN_FIRST = "run `python deepfake_detection.py` first"


class EnsembleError(DeepfakeError):
    """A training run, checkpoint, test folder or weight the ensemble cannot do without."""


@dataclass
class Member:
    """One detector of the ensemble: its checkpoint file, the validation metrics it is weighed by and the
    id of the split it was trained on (None for checkpoints that predate split ids)."""

    name: str
    checkpoint: Path  # a k-fold run's folder for a member made of its fold models
    val_metrics: dict
    data_id: str | None
    folds: tuple[Path, ...] = ()  # the fold models whose average the member is, in a k-fold run

    @functools.cached_property
    def sha256(self) -> str:
        """The checkpoint's digest (of its fold checkpoints' digests), read once: the frontier, the stored
        validation scores and the meta file all match on it."""
        return fold_digest([file_sha256(p) for p in self.folds]) if self.folds else file_sha256(self.checkpoint)


# ---------------------------------------------------------------------------------------------
# Load run
# ---------------------------------------------------------------------------------------------

def run_members(results: dict, checkpoint_dir: Path) -> list[Member]:
    """Every model of the training run with a final checkpoint, with the validation metrics recorded for it."""
    members = []
    for name, entry in results.get("models", {}).items():
        final = entry.get("checkpoints", {}).get("final")
        if final is None:
            log.warning("%s has no final checkpoint (%s); left out of the ensemble", name,
                        entry.get("error", "training did not finish"))
            continue
        checkpoint = _locate(Path(final), checkpoint_dir)
        members.append(Member(name, checkpoint, entry.get("val", {}).get("final", {}),
                              _checkpoint_metrics(checkpoint).get("data_id")))
    if not members:
        raise EnsembleError(f"no final checkpoints recorded in {results_path(checkpoint_dir)}: {TRAIN_FIRST}")
    return members


def fold_members(results: dict, checkpoint_dir: Path) -> list[Member]:
    """Every architecture that finished in every fold of a k-fold run, scored by its out-of-fold metrics."""
    folds = results.get("folds", {})
    members = [Member(name, checkpoint_dir, entry["oof"], None,
                      tuple(fold_checkpoints(checkpoint_dir, name, folds["k"])))
               for name, entry in folds.get("models", {}).items()]
    if not members:
        raise EnsembleError(f"no model finished every fold in {checkpoint_dir}: rerun the training command to resume")
    return members


def _locate(recorded: Path, checkpoint_dir: Path) -> Path:
    """The file of that name in checkpoint_dir if it is there (recorded paths may be relative to another
    working directory, or the run was copied), else the recorded path."""
    local = checkpoint_dir / recorded.name
    return local if local.exists() else recorded


def explicit_members(paths: list[Path]) -> list[Member]:
    """Checkpoints picked by hand; their validation metrics come from the checkpoint itself."""
    if len(set(paths)) < len(paths):
        raise EnsembleError("a checkpoint is listed twice in --checkpoints; list each file once")
    stems = [path.stem for path in paths]
    names = stems if len(set(stems)) == len(stems) else [str(path) for path in paths]
    metrics = [_checkpoint_metrics(path) for path in paths]
    return [Member(name, path, m.get("val", {}), m.get("data_id")) for name, path, m in zip(names, paths, metrics)]


def _checkpoint_metrics(path: Path) -> dict:
    return read_checkpoint(path).get("metrics") or {}


def trained_on_this_split(members: list[Member], split_file: Path, data_id: str | None,
                          explicit: bool) -> list[Member]:
    """The members trained on the split in ``split_file``.

    A model trained on another split (an earlier run in this folder with another seed, or a checkpoint
    of another run) has seen some of these validation images, so its scores, weight and the chosen cut
    would be inflated: it is left out with a warning, or refused when it was listed by hand. Split files
    written before splits had an id cannot be checked.
    """
    if data_id is None:
        return members
    foreign = [m for m in members if m.data_id != data_id]
    if foreign and explicit:
        raise EnsembleError(f"{foreign[0].checkpoint} was not trained on the split in {split_file}, so its "
                            f"validation scores would count images it trained on: list checkpoints of this run, "
                            f"or pass --checkpoint-dir of the run that trained it")
    for member in foreign:
        log.warning("%s (%s) was not trained on the split in %s; left out of the ensemble (retrain it with "
                    "`python deepfake_detection.py --models %s`)", member.name, member.checkpoint, split_file,
                    member.name)
    kept = [m for m in members if m.data_id == data_id]
    if not kept:
        raise EnsembleError(f"no final checkpoint in {split_file.parent} was trained on its split: {TRAIN_FIRST}")
    return kept


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


# ---------------------------------------------------------------------------------------------
# Weigh
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Predict
# ---------------------------------------------------------------------------------------------

def load_models(members: list[Member], device: torch.device) -> dict[str, nn.Module]:
    """All members loaded up front, so a broken checkpoint stops the run before any prediction."""
    return {member.name: FoldAverage([load_checkpoint(p, device) for p in member.folds]).eval() if member.folds
            else load_checkpoint(member.checkpoint, device) for member in members}


def member_probs(models: dict[str, nn.Module], images: np.ndarray, config: Config,
                 device: torch.device) -> dict[str, np.ndarray]:
    """Each model's fake probability per image, with the run's batch size and flip test-time augmentation."""
    return {name: predict_fake_proba(model, images, batch_size=config.eval_batch_size, device=device,
                                     tta_flip=config.tta_flip)
            for name, model in models.items()}


def predicted_classes(fake_probs: np.ndarray, threshold: float = THRESHOLD) -> list[str]:
    return [CLASS_NAMES[int(p >= threshold)] for p in fake_probs]


def score(labels: np.ndarray, member_probs: dict[str, np.ndarray], ensemble_probs: np.ndarray,
          threshold: float) -> dict:
    """The ensemble's metrics (at its threshold) next to each single model's (at 0.5), on the same images."""
    return {
        "ensemble": classification_metrics(labels, ensemble_probs, threshold),
        "single": {name: classification_metrics(labels, p, THRESHOLD) for name, p in member_probs.items()},
    }


# ---------------------------------------------------------------------------------------------
# Write
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Orchestration
# ---------------------------------------------------------------------------------------------

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
                 **choose_point(frontier["points"], operating_point, min_clean)}
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
        table = _oof_table(checkpoint_dir)
        paths, (labels, probs) = table["path"].tolist(), _oof_columns(table, [m.name for m in members])
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


def validation_probs(members: list[Member], models: dict[str, nn.Module] | None, results: dict, split_file: Path,
                     config: Config, device: torch.device) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The validation labels and each member's fake probabilities: as the evaluation stored them for these very
    checkpoint files, so a run folder copied without its data still submits, else from the split's images."""
    if config.folds:
        return oof_probs(split_file.parent, [m.name for m in members])
    stored = stored_validation(results.get("frontier"), {m.name: m.sha256 for m in members})
    if stored is not None:
        return stored
    val, _ = load_validation(split_file, config.image_size)
    return val.labels, member_probs(models or load_models(members, device), val.images, config, device)


def oof_probs(checkpoint_dir: Path, names: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A k-fold run's labels and each member's out-of-fold fake probabilities, from its OOF table."""
    return _oof_columns(_oof_table(checkpoint_dir), names)


def _oof_table(checkpoint_dir: Path) -> pd.DataFrame:
    path = checkpoint_dir / OOF_NAME
    if not path.is_file():
        raise EnsembleError(f"{path} is missing: run `python deepfake_detection.py --evaluate-only --checkpoint-dir "
                            f"{checkpoint_dir}` to pool the folds again")
    return pd.read_csv(path)


def _oof_columns(table: pd.DataFrame, names: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return table["label"].to_numpy(np.int64), {name: table[f"proba_{name}"].to_numpy(np.float32) for name in names}


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
