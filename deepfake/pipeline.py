"""The end-to-end run: discover -> split -> generate samples -> train (phase 1, phase 2) -> evaluate.

Each finished phase is a checkpoint whose config fingerprint is checked on the next run, so an
interrupted run resumes where it stopped and a finished model is never retrained by accident. With
``folds`` the same happens once per fold (deepfake/fold_run.py), then the folds are pooled out of fold.
Under torchrun every process trains each model on its shard (deepfake/distributed.py); rank 0 alone
writes samples, checkpoints and results, and evaluates.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from . import distributed
from .checkpoints import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .config import Config
from .data import (SPLIT_NAME, ImageSet, find_test_dir, images_digest, load_labelled, resolve_data_dir, save_split,
                   split_indices)
from .evaluate import evaluate_run
from .folds import fold_indices
from .fold_run import fold_config, pool_folds
from .labels import load_labelled_from_files
from .models import build_from_config, zoo_entry
from .pretrained import require_weights
from .results import library_versions, load_run_config, machine_description, results_path, timed, update_results
from .runtime import seed_everything, setup_runtime
from .samples import adversarial_fingerprint, adversarial_samples, augmented_samples
from .train import NonFiniteLossError, PhaseSettings, base_settings, finetune_settings, train_phase

log = logging.getLogger(__name__)


def run(config: Config, *, force: bool = False, evaluate_only: bool = False, explicit_data_dir: bool = True) -> dict:
    """Train and evaluate every model in ``config.models``; returns the results dict (rank 0's; other ranks
    of a torchrun run return an empty one)."""
    distributed.init_from_env(config.device)
    try:
        if evaluate_only:
            # Re-evaluate the run as it was configured; only where it lives, where to compute and which of its
            # models (every one trained, unless --models picks some) may differ.
            recorded = replace(load_run_config(config.checkpoint_dir), device=config.device, models=config.models)
            device = setup_runtime(recorded)
            if not distributed.is_main():
                return {}
            if recorded.folds:
                for fold in range(recorded.folds):
                    evaluate_run(fold_config(recorded, fold), device)
                return pool_folds(recorded, device)
            return evaluate_run(recorded, device)
        return _train_and_evaluate(config, force, explicit_data_dir)
    finally:
        distributed.cleanup()


def _train_and_evaluate(config: Config, force: bool, explicit_data_dir: bool) -> dict:
    device = setup_runtime(config)
    if config.require_pretrained:
        timm_names = {name: zoo_entry(name).timm_name for name in config.models if config.member(name).pretrained}
        require_weights({name: timm_name for name, timm_name in timm_names.items() if timm_name}, config.weights_dir)

    timings: dict[str, float] = {}
    with timed(timings, "load_data"):
        labelled, data_dir, label_source = _labelled(config, explicit_data_dir)
        config.data_dir = str(data_dir)
        source = f"the images in {data_dir}"
        if config.folds:
            splits = fold_indices(labelled, config.folds, config.seed, source)
        else:
            splits = [split_indices(labelled.labels, config.val_fraction, config.seed, source=source)]
    if not config.folds:
        train, val = labelled.subset(splits[0][0]), labelled.subset(splits[0][1])
        del labelled  # the split holds copies: 370 MB fewer at 120,000 images
        return _train_split(config, device, train, val, data_dir, label_source, timings, force)
    for fold, (train_idx, val_idx) in enumerate(splits):
        log.info("fold %d of %d: %d training, %d validation images", fold + 1, config.folds, len(train_idx),
                 len(val_idx))
        fold_timings = {"load_data": timings["load_data"]} if fold == 0 else {}
        _train_split(fold_config(config, fold), device, labelled.subset(train_idx), labelled.subset(val_idx),
                     data_dir, label_source, fold_timings, force)
    if not distributed.is_main():
        return {}
    return pool_folds(config, device)


def _labelled(config: Config, explicit_data_dir: bool) -> tuple[ImageSet, Path, dict | str]:
    """The labelled images, their folder and where their labels came from (label files, or folder names)."""
    if config.labels:
        data_dir = Path(config.data_dir)
        labelled, label_source = load_labelled_from_files(config.labels, data_dir, config.image_size)
        differ = label_source["differ_from_folder_names"]
        log.info("labels: %d images from %s%s", len(labelled), ", ".join(config.labels),
                 "" if differ is None else f" ({differ} differ from their folder names)")
        return labelled, data_dir, label_source
    data_dir = distributed.main_first(
        lambda: resolve_data_dir(config.data_dir, explicit_data_dir, Path(config.data_dir) / "demo"))
    return load_labelled(data_dir, config.image_size), data_dir, "folder names"


def _train_split(config: Config, device: torch.device, train: ImageSet, val: ImageSet, data_dir: Path,
                 label_source: dict | str, timings: dict[str, float], force: bool) -> dict:
    """Samples, both phases and the evaluation of every model on one train/validation split."""
    checkpoint_dir, data_id = Path(config.checkpoint_dir), images_digest(train)
    if distributed.is_main():
        save_split(checkpoint_dir / SPLIT_NAME, train, val, data_dir=str(data_dir), seed=config.seed,
                   val_fraction=config.val_fraction, data_id=data_id)
    log.info("data: %s | train %d, validation %d images", data_dir, len(train), len(val))

    with timed(timings, "augmented_samples"):
        augmented = distributed.main_first(lambda: augmented_samples(train, config, data_id))
    train_pool = ImageSet.concat(train, augmented)

    path = results_path(checkpoint_dir)
    test_dir = find_test_dir(data_dir)

    def record_run(results: dict) -> None:
        results.update(
            config=config.to_dict(), seed=config.seed, versions=library_versions(), device=str(device),
            machine=machine_description(), started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        results["data"] = {
            "data_dir": str(data_dir),
            "test_dir": str(test_dir) if test_dir else None,
            "split_file": str(checkpoint_dir / SPLIT_NAME),
            "labels": label_source,
            "counts": {"train": _class_counts(train), "val": _class_counts(val), "augmented": _class_counts(augmented)},
        }
        models = results.setdefault("models", {})
        for name in [n for n, entry in models.items() if entry.get("data_id") != data_id]:
            log.info("%s was trained on another split; its results are dropped from this run's", name)
            del models[name]
        results["timings"] = timings

    _record(path, record_run)

    trainer = _ModelTrainer(config, device, path, data_id, force)
    base_ready = [name for name in config.models if trainer.base(name, train_pool, val, timings)]
    if not base_ready:
        raise NonFiniteLossError("no model finished base training (see the errors above): lower the learning rate "
                                 "(--set lr=... or NAME.lr=...) and rerun")

    crafted_by = trainer.best_base(base_ready)
    with timed(timings, "adversarial_samples"):
        crafting_model = load_checkpoint(trainer.checkpoint(crafted_by, "base"), device)
        adversarial = distributed.main_first(
            lambda: adversarial_samples(crafting_model, crafted_by, train, config, data_id, device))
    # A final model is its base, its recipe, and the pool its phase 2 saw: the crafting model's weights included,
    # so a --models subset, whose best base model may be another, never reuses finals a full run would not.
    adversarial_id = adversarial_fingerprint(crafting_model, crafted_by, config, data_id)
    finetune_pool = ImageSet.concat(train_pool, adversarial)
    del train_pool  # phase 1 is over; its copy of the training images would double phase 2's memory

    def record_samples(results: dict) -> None:
        results["data"]["counts"]["adversarial"] = _class_counts(adversarial)
        results["adversarial_samples"] = {
            "crafted_by": crafted_by, "count": len(adversarial), "epsilons": list(config.recipe.fgsm_epsilons),
            "dir": str(Path(config.generated_dir) / "adversarial"),
        }
        results["timings"] = timings

    _record(path, record_samples)

    for name in base_ready:
        trainer.finetune(name, finetune_pool, val, timings, adversarial_id)

    if not distributed.is_main():
        return {}
    with timed(timings, "evaluate"):
        evaluate_run(config, device)
    return update_results(path, lambda r: r.update(timings=timings))


def _record(path: Path, mutate: Callable[[dict], None]) -> None:
    """``update_results`` from the one process that writes the run's files."""
    if distributed.is_main():
        update_results(path, mutate)


class _ModelTrainer:
    """Runs one phase for one model, skipping it when a checkpoint of the same data and the model's own recipe (and,
    for phase 2, the same adversarial pool) already exists."""

    def __init__(self, config: Config, device: torch.device, results_file: Path, data_id: str, force: bool):
        self.config, self.device, self.results_file = config, device, results_file
        self.data_id, self.force = data_id, force

    def fingerprint(self, name: str, phase: str, pool: str = "") -> str:
        return "-".join(filter(None, (self.data_id, self.config.member_fingerprint(name, phase), pool)))

    def checkpoint(self, name: str, phase: str) -> Path:
        return Path(self.config.checkpoint_dir) / f"{name}_{phase}.pt"

    def base(self, name: str, pool: ImageSet, val: ImageSet, timings: dict) -> bool:
        fingerprint = self.fingerprint(name, "base")
        if self._is_current(name, "base", fingerprint):
            log.info("%s: base checkpoint matches its recipe, skipping phase 1 (--force retrains)", name)
            return True
        return self._train(name, lambda: build_from_config(name, self.config).to(self.device),
                           lambda model: base_settings(self.config, name, model.pretrained_loaded), pool, val, timings,
                           fingerprint)

    def finetune(self, name: str, pool: ImageSet, val: ImageSet, timings: dict, adversarial: str) -> bool:
        """Phase 2, skipped when the final checkpoint was trained on this base and recipe and on the adversarial
        pool whose fingerprint is ``adversarial``."""
        fingerprint = self.fingerprint(name, "final", adversarial)
        if self._is_current(name, "final", fingerprint):
            log.info("%s: final checkpoint matches its recipe and the adversarial pool, skipping phase 2 (--force "
                     "retrains)", name)
            return True
        return self._train(name, lambda: load_checkpoint(self.checkpoint(name, "base"), self.device),
                           lambda model: finetune_settings(self.config, name), pool, val, timings, fingerprint)

    def best_base(self, names: list[str]) -> str:
        accuracies = {n: read_checkpoint(self.checkpoint(n, "base"))["metrics"]["val"]["accuracy"] for n in names}
        return max(accuracies, key=accuracies.get)

    def _train(self, name, make_model: Callable[[], nn.Module], make_settings: Callable[[nn.Module], PhaseSettings],
               pool, val, timings, fingerprint: str) -> bool:
        # Reseeded per phase: a model's initialisation and dropout must not depend on which models
        # trained (or were skipped as already trained) before it, so a resumed or single-model run
        # rebuilds the model a full run made.
        seed_everything(self.config.seed)
        model = make_model()
        settings = make_settings(model)
        phase = "final" if settings.name == "finetune" else "base"
        log.info("%s: %s phase, %d epochs on %d images", name, settings.name, settings.epochs, len(pool))
        try:
            with timed(timings, f"{settings.name}:{name}"):
                outcome = train_phase(model, pool, val, self.config, settings, self.device, label=name)
        except NonFiniteLossError as error:
            message = str(error)
            log.error("%s", message)

            def record_failure(results: dict) -> None:
                # The checkpoints an earlier run recorded for this phase and the next are not this config's.
                entry = results["models"].setdefault(name, {})
                entry.update(error=message, data_id=self.data_id)
                for stale in ("base", "final") if phase == "base" else ("final",):
                    entry.get("checkpoints", {}).pop(stale, None)

            _record(self.results_file, record_failure)
            return False
        if distributed.is_main():
            save_checkpoint(
                self.checkpoint(name, phase), model, config=self.config.to_dict(), phase=phase,
                metrics={"val": outcome.val_metrics, "fingerprint": fingerprint, "data_id": self.data_id},
            )

        def record(results: dict) -> None:
            if settings.name == "base":
                results["models"][name] = {"pretrained": bool(model.pretrained_loaded), "data_id": self.data_id,
                                           "recipe": dataclasses.asdict(self.config.member(name))}
            entry = results["models"].setdefault(name, {})
            entry.pop("error", None)
            entry.setdefault("checkpoints", {})[phase] = str(self.checkpoint(name, phase))
            entry.setdefault("history", {})[settings.name] = outcome.history
            entry.setdefault("val", {})[phase] = outcome.val_metrics
            entry.setdefault("images_per_second", {})[settings.name] = outcome.images_per_second
            entry.setdefault("wall_seconds", {})[settings.name] = outcome.seconds
            entry.setdefault("precision", {})[settings.name] = outcome.precision
            entry.setdefault("precision_why", {})[settings.name] = outcome.precision_why
            if settings.name == "base":
                entry["best_epoch"], entry["averaged_epochs"] = outcome.best_epoch, outcome.averaged_epochs
            results["timings"] = timings

        _record(self.results_file, record)
        distributed.barrier()  # the other ranks read this checkpoint next (phase 2, best_base, _is_current)
        log.info("%s: %s done, kept epoch %d, val accuracy %.4f -> %s", name, settings.name, outcome.best_epoch,
                 outcome.val_metrics["accuracy"], self.checkpoint(name, phase))
        return True

    def _is_current(self, name: str, phase: str, fingerprint: str) -> bool:
        if self.force or not self.checkpoint(name, phase).exists():
            return False
        try:
            payload = read_checkpoint(self.checkpoint(name, phase))
        except CheckpointError:
            return False
        return payload.get("metrics", {}).get("fingerprint") == fingerprint


def _class_counts(images: ImageSet) -> dict[str, int]:
    return {"real": int((images.labels == 0).sum()), "fake": int((images.labels == 1).sum())}
