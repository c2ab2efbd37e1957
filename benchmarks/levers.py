"""Measure one training lever: phase 1 (and optionally phase 2) of one model on the benchmark's pipeline split.

    python -m benchmarks.levers --model resnet_se --set augmentation=seed spectrum_models='("resnet_se",)'
    python -m benchmarks.levers --model resnet_se --finetune --set fgsm_epsilons="(0.02,0.03,0.05,0.08)"

Reads the train/validation split that ``benchmarks/benchmark.py --preset full`` made inside its
pipeline part (run it first), so a lever is chosen on the pipeline's validation images only, never
on the unseen 30%. Starts from the ``full`` preset; ``--set`` overrides config fields as
``deepfake_detection.py --set`` does; ``--train-fraction`` trains on a stratified, seeded share of
the training split (a learning curve; set epochs and ``augment_per_class`` to match). Prints one
JSON line (validation accuracy/AUC per epoch; with ``--finetune``, clean and PGD-10 accuracy at
2/255 and 8/255 before and after phase 2; validation accuracy with flip test-time augmentation and
under the benchmark's three corruptions) and appends it to benchmarks/levers.jsonl. A phase-1 model is
cached under benchmarks/runs/levers/base, keyed by everything but phase 2's fields, so a phase-2 lever
on two seeds trains no base model twice (the record says ``base_cached``).

    python -m benchmarks.levers --model resnet_se --finetune --folds 5

judges it instead by out-of-fold accuracy (with its 95% interval) over 5 folds of the pipeline's 980
labelled images, each fold trained as above: steadier than 196 validation images, at 5 times the cost.

    python -m benchmarks.levers --table

rewrites the table between the markers in benchmarks/LEVERS.md from levers.jsonl, so no number
there is typed by hand.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.benchmark import CORRUPTIONS, SPLIT_SEED, UNSEEN_FRACTION, corrupted_accuracy, prepare_split
from benchmarks.common import REPO, RUNS, SHARED
from deepfake.attacks import pgd
from deepfake.cli import parse_overrides
from deepfake.config import MODEL_NAMES, Config, config_from_dict, make_config
from deepfake.data import SPLIT_NAME, ImageSet, images_digest, load_labelled, load_split, save_split, split_indices
from deepfake.folds import fold_indices, oof_metrics
from deepfake.inference import as_nchw_uint8, count_correct, predict_fake_proba, to_float
from deepfake.metrics import classification_metrics
from deepfake.models import build_from_config
from deepfake.results import kept_epochs
from deepfake.runtime import seed_everything, setup_runtime
from deepfake.samples import augmented_samples
from deepfake.train import PhaseResult, base_settings, finetune_settings, train_phase

RUN_DIR = RUNS / "full"
RECORDS = REPO / "benchmarks" / "levers.jsonl"
LEVERS_MD = REPO / "benchmarks" / "LEVERS.md"
MARKERS = ("<!-- levers.jsonl table: start -->", "<!-- levers.jsonl table: end -->")
ATTACK_EPSILONS = {"2/255": 2 / 255, "8/255": 8 / 255}
TABLE_CELLS = [("attack_before", ("clean", *ATTACK_EPSILONS)), ("attack_after", ("clean", *ATTACK_EPSILONS)),
               ("corrupted_before", CORRUPTIONS), ("corrupted_after", CORRUPTIONS)]  # record key, its columns
# Levers measured, not kept and removed from Config, at the value that turned them off: older records carry them.
RETIRED_FIELDS = {"cutout_prob": 0.0, "mixup_alpha": 0.0, "ema_decay": 0.0, "trades_beta": 0.0,
                  "finetune_corruption_prob": 0.0, "pseudo_label_confidence": 0.0, "finetune_eps_ramp": 0.0,
                  "nfgsm_noise": 0.0, "rst_teacher": ""}
LEVER_BUDGET = {"base_epochs": 8, "patience": 8}  # the --set of the reference row (see write_table)
SPEED_ONLY = {"weights_dir", "threads"}  # fields a reference row of another preset may set (see write_table)
BASE_CACHE = RUNS / "levers" / "base"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet_se", help=f"{', '.join(MODEL_NAMES)} or a timm model name")
    parser.add_argument("--preset", default="full", help="the recipe the --set overrides start from")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="config overrides")
    parser.add_argument("--finetune", action="store_true", help="also run phase 2 and attack before/after")
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR)
    parser.add_argument("--train-fraction", type=float, default=1.0, metavar="F",
                        help="train on this share of the training split (0 < F <= 1); validation stays whole")
    parser.add_argument("--folds", type=int, default=0, metavar="K",
                        help="judge the lever out of fold over K folds of the pipeline's labelled images (K times the "
                             "training) instead of on its validation split")
    parser.add_argument("--table", action="store_true", help="only rewrite the table in LEVERS.md")
    args = parser.parse_args()
    if args.folds and (args.folds < 2 or args.train_fraction < 1):
        parser.error("--folds takes K >= 2, and the whole of each fold's training part (no --train-fraction)")
    if not 0 < args.train_fraction <= 1:
        parser.error(f"--train-fraction must be in (0, 1], got {args.train_fraction}")
    if args.table:
        write_table()
        return 0

    overrides = parse_overrides(args.set)
    config = make_config(args.preset, **overrides)
    device = setup_runtime(config)
    started = time.perf_counter()
    record = {"model": args.model, "preset": args.preset, "set": overrides,
              "config": lever_values(config, args.model), "train_fraction": args.train_fraction}
    if args.folds:
        record.update(fold_record(args.model, config, args.run_dir, args.folds, args.finetune, device))
    else:
        train, pool, val = levers_data(config, args.run_dir, args.train_fraction)
        record.update(measure(args.model, config, train, pool, val, device, args.finetune, args.train_fraction)[0])
    record["seconds"] = round(time.perf_counter() - started)
    print(json.dumps(record))
    with open(RECORDS, "a") as handle:
        handle.write(json.dumps(record) + "\n")
    return 0


def measure(name: str, config: Config, train: ImageSet, pool: ImageSet, val: ImageSet, device: torch.device,
            finetune: bool, train_fraction: float = 1.0) -> tuple[dict, np.ndarray, np.ndarray]:
    """One model through phase 1 (and phase 2), measured on ``val``: the record's figures, and the validation fake
    probabilities after phase 1 and at the end."""
    seed_everything(config.seed)  # each phase starts where the pipeline's does, so a row reproduces its model
    model = build_from_config(name, config).to(device)
    base, cached = cached_base(model, name, config, train_fraction, val, lambda: train_phase(
        model, pool, val, config, base_settings(config, name, model.pretrained_loaded), device, label=name))
    base_probs = predict_fake_proba(model, val.images, device=device)
    record = {
        "train_images": len(train), "best_epoch": base.best_epoch, "averaged_epochs": base.averaged_epochs,
        "val_acc": [round(row["val_acc"], 3) for row in base.history],
        "val_auc": [round(row["val_auc"], 3) for row in base.history],
        "kept_val_acc": round(base.val_metrics["accuracy"], 3), "kept_val_acc_tta": tta_accuracy(model, val, device),
        "corrupted_before": corruption_accuracy(model, val, device), "images_per_second": round(base.images_per_second),
        "base_cached": cached,
    }
    if finetune:
        record["attack_before"] = attack_accuracy(model, val, device)
        seed_everything(config.seed)
        train_phase(model, pool, val, config, finetune_settings(config, name), device, label=name)
        record["attack_after"] = attack_accuracy(model, val, device)
        record["final_val_acc_tta"] = tta_accuracy(model, val, device)
        record["corrupted_after"] = corruption_accuracy(model, val, device)
    return record, base_probs, predict_fake_proba(model, val.images, device=device)


def fold_record(name: str, config: Config, run_dir: Path, folds: int, finetune: bool, device: torch.device) -> dict:
    """The lever judged over ``folds`` stratified folds of the pipeline's labelled images (training and validation
    split together): out-of-fold accuracy and AUC with 95% bootstrap intervals, after phase 1 and at the end, and
    every other figure as the folds' mean weighted by their validation images."""
    train, _, val = levers_data(config, run_dir)
    labelled = ImageSet.concat(train, val)
    cache = config.generated_dir
    records, labels, base_probs, final_probs = [], [], [], []
    for fold, (train_idx, val_idx) in enumerate(fold_indices(labelled, folds, config.seed)):
        fold_train, fold_val = labelled.subset(train_idx), labelled.subset(val_idx)
        config.generated_dir = f"{cache}/{folds}-fold-{fold}"
        pool = ImageSet.concat(fold_train, augmented_samples(fold_train, config, images_digest(fold_train)))
        record, base, final = measure(name, config, fold_train, pool, fold_val, device, finetune)
        records.append(record)
        labels.append(fold_val.labels)
        base_probs.append(base)
        final_probs.append(final)
    labels, sizes = np.concatenate(labels), [len(r) for r in base_probs]
    base_oof = oof_metrics(labels, np.concatenate(base_probs), seed=config.seed)
    pooled = {"folds": folds, "train_images": int(np.mean([r["train_images"] for r in records])),
              "best_epoch": records[0]["best_epoch"], "averaged_epochs": records[0]["averaged_epochs"],
              "val_acc": [round(base_oof["accuracy"], 3)], "val_auc": [round(base_oof["auc"], 3)],
              "kept_val_acc": round(base_oof["accuracy"], 3), "oof_base": base_oof,
              "fold_kept_val_acc": [r["kept_val_acc"] for r in records],
              "images_per_second": round(float(np.mean([r["images_per_second"] for r in records])))}
    if finetune:
        pooled["oof_final"] = oof_metrics(labels, np.concatenate(final_probs), seed=config.seed)
    for key in ("kept_val_acc_tta", "final_val_acc_tta"):
        if key in records[0]:
            pooled[key] = round(float(np.average([r[key] for r in records], weights=sizes)), 3)
    for key in ("corrupted_before", "corrupted_after", "attack_before", "attack_after"):
        if key in records[0]:
            pooled[key] = {k: round(float(np.average([r[key][k] for r in records], weights=sizes)), 3)
                           for k in records[0][key]}
    return pooled


def cached_base(model: torch.nn.Module, name: str, config: Config, train_fraction: float, val: ImageSet,
                train: Callable[[], PhaseResult]) -> tuple[PhaseResult, bool]:
    """Phase 1's outcome, loaded into ``model`` from the cache when the same model, phase-1 recipe and split
    trained it before, else ``train()``'s, then cached; and whether it came from the cache."""
    key = json.dumps([name, config.member_fingerprint(name, "base"), config.weights_dir, train_fraction,
                      images_digest(val)])
    path = BASE_CACHE / f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.pt"
    if path.exists():
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(payload["state_dict"])
        return PhaseResult(**payload["result"]), True
    result = train()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "result": vars(result)}, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return result, False


def tta_accuracy(model: torch.nn.Module, val: ImageSet, device: torch.device) -> float:
    """Validation accuracy with the prediction averaged over the image and its mirror (config tta_flip)."""
    probs = predict_fake_proba(model, val.images, device=device, tta_flip=True)
    return round(classification_metrics(val.labels, probs)["accuracy"], 3)


def corruption_accuracy(model: torch.nn.Module, val: ImageSet, device: torch.device) -> dict[str, float]:
    """Validation accuracy under the benchmark's JPEG q40, noise 0.08 and blur 1.0."""
    return {label: round(accuracy, 3) for label, accuracy in corrupted_accuracy(model, val, device=device).items()}


def attack_accuracy(model: torch.nn.Module, val: ImageSet, device: torch.device) -> dict[str, float]:
    """Clean and PGD-10 validation accuracy."""
    images, labels = to_float(as_nchw_uint8(val.images), device), torch.from_numpy(val.labels).to(device)
    model.eval()
    scores = {}
    for label, eps in {"clean": 0.0, **ATTACK_EPSILONS}.items():
        generator = torch.Generator().manual_seed(0)
        attacked = pgd(model, images, labels, eps, steps=10, generator=generator) if eps else images
        scores[label] = round(count_correct(model, attacked, labels) / len(labels), 3)
    return scores


def levers_data(config: Config, run_dir: Path, train_fraction: float = 1.0) -> tuple[ImageSet, ImageSet, ImageSet]:
    """(training split, it plus its augmented samples, validation split) of the benchmark's pipeline part.

    The samples are cached under benchmarks/runs/levers, per augmentation and count, not in the run.
    """
    config.generated_dir = str(RUNS / "levers" / f"{config.augmentation}-"
                               f"{config.augment_per_class}")
    split_file = run_dir / "checkpoints" / SPLIT_NAME
    if not split_file.exists():
        pipeline_data, _ = prepare_split(SHARED, run_dir / "data", UNSEEN_FRACTION, SPLIT_SEED)
        labelled = load_labelled(pipeline_data, config.image_size)
        train_idx, val_idx = split_indices(labelled.labels, config.val_fraction, config.seed)
        train, val = labelled.subset(train_idx), labelled.subset(val_idx)
        save_split(split_file, train, val, data_dir=str(pipeline_data), seed=config.seed,
                   val_fraction=config.val_fraction, data_id=images_digest(train))
    train, val, _ = load_split(split_file, config.image_size)
    if train_fraction < 1:
        train = train.subset(split_indices(train.labels, 1 - train_fraction, config.seed)[0])
    return train, ImageSet.concat(train, augmented_samples(train, config, images_digest(train))), val


def lever_values(config: Config, model: str) -> dict:
    """What a record keeps of its config: ``model``'s training values, where the weights come from and the size
    of the phase-2 pool."""
    return {**config.training_values(model), "weights_dir": config.weights_dir,
            "adversarial_count": config.adversarial_count}


def record_values(record: dict) -> dict:
    """A record's training values under today's field names, retired levers at the values that turned them off;
    a record written before member recipes (flat fields, per-model side tables) is read through its config."""
    values = record["config"]
    if "bf16" not in values:
        values = {**lever_values(config_from_dict(values), record["model"]),
                  **{k: values[k] for k in ("weights_dir", "adversarial_count") if k in values}}
    return {**RETIRED_FIELDS, **{k: v for k, v in record["config"].items() if k in RETIRED_FIELDS}, **values}


def write_table() -> None:
    """One row per lever: what it changes from its preset's reference recipe, and what that measured.

    The reference of ``full`` is the first record whose --set is only the 8-epoch budget (the `full` preset
    of round 2), that of another preset its first record that sets only where the weights are and how many
    threads run; so a row keeps its meaning when the preset later adopts a lever. Config fields added after
    a record was written count at their defaults, the behaviour before they existed.
    """
    pct = lambda value: "" if value is None else f"{100 * value:.1f}"  # noqa: E731
    records = [json.loads(line) for line in RECORDS.read_text().splitlines()]
    configs = [json.loads(json.dumps(record_values(record))) for record in records]
    references = {}
    for record, config in zip(records, configs):
        preset = record.get("preset", "full")
        is_reference = (record["set"] == LEVER_BUDGET if preset == "full" else set(record["set"]) <= SPEED_ONLY)
        if is_reference:  # each model's own recipe is its reference where it has one
            references.setdefault((preset, record["model"]), config)
            references.setdefault(preset, config)
    latest = {}  # a rerun of the same lever (newer fields, same numbers) replaces its row in place
    for record, config in zip(records, configs):
        preset = record.get("preset", "full")
        reference = references.get((preset, record["model"]), references[preset])
        changes = [f"{k}={v}" for k, v in config.items() if v != reference[k] and k not in SPEED_ONLY]
        if record.get("folds"):
            oof = record.get("oof_final") or record["oof_base"]
            changes.append(f"({record['folds']}-fold OOF: {'final' if 'oof_final' in record else 'phase 1'} "
                           f"{pct(oof['accuracy'])} [{pct(oof['accuracy_ci'][0])}, {pct(oof['accuracy_ci'][1])}])")
        if record.get("train_fraction", 1) < 1:
            changes.append(f"train_fraction={record['train_fraction']} ({record['train_images']} images)")
        setting = " ".join(changes) or "(reference)"
        if preset != "full":
            setting = f"`{preset}`: {setting}"
        key = (record["model"], setting)
        if "attack_after" in latest.get(key, {}) and "attack_after" not in record:
            key += ("phase 1 only",)  # its own row: replacing would drop the fine-tune columns
        latest[key] = record
    rows = ["| model | change from the reference recipe | val acc kept (epoch) | with flip TTA | best val AUC "
            "| clean / PGD-10 2/255 / 8/255 before fine-tune | after fine-tune "
            "| JPEG q40 / noise 0.08 / blur 1.0 before fine-tune | after fine-tune |",
            "|---|---|---:|---:|---:|---|---|---|---|"]
    for (model, setting, *_), record in latest.items():
        cells = [" / ".join(pct(record[key][k]) for k in keys) if key in record else "" for key, keys in TABLE_CELLS]
        kept = kept_epochs(record["best_epoch"], record.get("averaged_epochs", 0))
        rows.append(f"| {model} | {setting} | {pct(record['kept_val_acc'])} ({kept}) "
                    f"| {pct(record.get('kept_val_acc_tta'))} | {pct(max(record['val_auc']))} | " + " | ".join(cells)
                    + " |")
    text = LEVERS_MD.read_text()
    start, end = text.index(MARKERS[0]) + len(MARKERS[0]), text.index(MARKERS[1])
    LEVERS_MD.write_text(text[:start] + "\n" + "\n".join(rows) + "\n" + text[end:])


if __name__ == "__main__":
    sys.exit(main())
