"""Which detectors an ensemble holds: a run's final checkpoints (a k-fold run's fold averages, or files picked
by hand), each kept only when it trained on the run's own split, loaded, and scored on the images it never
trained on (the validation split, or a k-fold run's out-of-fold images).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .checkpoints import file_sha256, load_checkpoint, read_checkpoint
from .config import Config
from .data import load_validation
from .errors import DeepfakeError
from .fold_run import OOF_NAME, fold_checkpoints
from .folds import FoldAverage, fold_digest
from .frontier import stored_validation
from .inference import predict_fake_proba
from .results import results_path

log = logging.getLogger(__name__)

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
    return oof_columns(oof_table(checkpoint_dir), names)


def oof_table(checkpoint_dir: Path) -> pd.DataFrame:
    path = checkpoint_dir / OOF_NAME
    if not path.is_file():
        raise EnsembleError(f"{path} is missing: run `python deepfake_detection.py --evaluate-only --checkpoint-dir "
                            f"{checkpoint_dir}` to pool the folds again")
    return pd.read_csv(path)


def oof_columns(table: pd.DataFrame, names: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return table["label"].to_numpy(np.int64), {name: table[f"proba_{name}"].to_numpy(np.float32) for name in names}
