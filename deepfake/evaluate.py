"""Evaluation of every trained checkpoint on the run's saved validation split.

Clean metrics, an FGSM/PGD sweep before and after adversarial fine-tuning, everyday image
corruptions and Grad-CAM, written into results.json under models[name]["evaluation"]; then
every figure and visualizations/report.md. Nothing here trains: it reads the checkpoints and
the split the training run saved, so ``--evaluate-only`` can redo it at any time. Clean metrics cover
the whole split; attack and corruption sweeps, which cost hundreds of forward passes an image, a
fixed stratified sample of at most ``eval_max_images`` of it (all of a challenge-sized split).
"""
from __future__ import annotations

import itertools
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import classification_report, confusion_matrix
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from .attacks import fgsm, pgd
from .checkpoints import CheckpointError, load_checkpoint
from .config import Config
from .corruptions import CORRUPTIONS, corrupt
from .data import CLASS_NAMES, SPLIT_NAME, ImageSet, load_validation, to_tensor
from .explain import gradcam, target_layer_name
from .cut import weight_label
from .frontier import frontier_of
from .inference import count_correct, eval_mode, fake_proba, predict_fake_proba, to_float
from .metrics import classification_metrics
from .plots import (PHASE_TITLES, attack_accuracy, eps_label, figure_names, headline_epsilons, plot_adversarial_grid,
                    plot_attack_comparison, plot_corruptions, plot_evaluation, plot_frontier, plot_gradcam,
                    plot_models_overview, plot_training_curves)
from .report import write_report
from .results import load_results, results_path, timed, update_results

log = logging.getLogger(__name__)

PHASES = ("base", "final")  # checkpoint before / after adversarial fine-tuning
SHOWCASE_IMAGES = 6  # rows of the adversarial-example grids
ATTACKS = ("fgsm", "pgd")


def evaluate_run(config: Config, device: torch.device) -> dict:
    """Evaluate every model of the run that has checkpoints; returns the updated results."""
    checkpoint_dir = Path(config.checkpoint_dir)
    path = results_path(checkpoint_dir)
    results = load_results(path)
    # The models asked for only: a `--models` subset leaves the other models' evaluations as they were.
    available = [name for name, entry in results.get("models", {}).items() if entry.get("checkpoints")]
    if not available:
        raise CheckpointError(f"no trained checkpoints in {checkpoint_dir}: run `python deepfake_detection.py` first")
    trained = [name for name in available if name in config.models]
    if not trained:
        raise CheckpointError(f"{checkpoint_dir} has checkpoints for {', '.join(available)} only: pass --models "
                              f"with some of those, or train {', '.join(config.models)} first")

    val, _ = load_validation(checkpoint_dir / SPLIT_NAME, config.image_size)  # DataError naming the fix if missing
    sample = evaluation_sample(val.labels, config.eval_max_images, config.seed)
    corrupted = corrupted_sets(val.images[sample], config.corruption_severities, config.seed)
    log.info("evaluating %s on %d validation images (attacks and corruptions on %d of them)", ", ".join(trained),
             len(val), len(sample))
    for name in trained:
        phases = [p for p in PHASES if p in results["models"][name]["checkpoints"]]
        checkpoints = {phase: checkpoint_dir / f"{name}_{phase}.pt" for phase in phases}
        evaluation = evaluate_model(name, checkpoints, val, corrupted, config, device, sample)
        results = update_results(path, lambda r: r["models"][name].update(evaluation=evaluation))
        if results["models"][name].get("history"):
            plot_training_curves(results["models"][name]["history"], name,
                                 Path(config.viz_dir) / figure_names(name)["training_curves"])
        _log_summary(name, evaluation)
    finals = {name: checkpoint_dir / f"{name}_final.pt" for name, entry in results["models"].items()
              if "final" in entry.get("checkpoints", {})}
    if finals:
        frontier = frontier_of(finals, val, sample, corrupted, config, device)
        results = update_results(path, lambda r: r.update(frontier=frontier))
        _log_frontier(frontier)
        plot_frontier(results, config.viz_dir)
    plot_models_overview(results, config.viz_dir)
    log.info("figures and report in %s", write_report(results, config.viz_dir).parent)
    return results


def evaluate_model(name: str, checkpoints: dict[str, Path], val: ImageSet, corrupted: dict[tuple[str, int], np.ndarray],
                   config: Config, device: torch.device, sample: np.ndarray | None = None) -> dict:
    """Every measure for one model's checkpoints (phase -> file), plus its per-model figures; ``sample`` as
    in :func:`measure`."""
    viz_dir, figures = Path(config.viz_dir), figure_names(name)
    settings = evaluation_settings(config)
    sample = np.arange(len(val)) if sample is None else sample
    seconds: dict[str, float] = {}
    evaluation: dict = {"evaluated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": str(device),
                        "n_val": len(val), "n_sample": len(sample), "settings": settings}
    showcase = showcase_indices(val.labels, SHOWCASE_IMAGES, config.seed)
    for phase, checkpoint in checkpoints.items():
        model = load_checkpoint(checkpoint, device)
        evaluation[phase], probs = measure(model, val, corrupted, config, device, seconds, label=f"{name} {phase}",
                                           sample=sample)
        with timed(seconds, "figures"):
            plot_evaluation(val.labels, probs, evaluation[phase]["clean"], f"{name}, {PHASE_TITLES[phase]}",
                            viz_dir / figures[f"{phase}_evaluation"])
            adversarial, adversarial_probs = adversarial_examples(
                model, val.images[showcase], val.labels[showcase], settings["epsilons"], device)
            plot_adversarial_grid(adversarial, adversarial_probs, val.labels[showcase], settings["epsilons"],
                                  f"{name}: FGSM examples {PHASE_TITLES[phase]}", viz_dir / figures[f"adv_{phase}"])
    if config.gradcam_images:
        with timed(seconds, "gradcam"):  # the last checkpoint evaluated: final, or base if fine-tuning failed
            explained = showcase_indices(val.labels, config.gradcam_images, config.seed)
            evaluation["gradcam"] = {"phase": phase, **explain_model(
                model, val, explained, device, f"{name} ({phase} checkpoint)", viz_dir / figures["gradcam"])}
    with timed(seconds, "figures"):
        plot_attack_comparison(evaluation, name, viz_dir / figures["comparison"])
        plot_corruptions(evaluation, name, viz_dir / figures["corruptions"])
    evaluation["seconds"] = seconds
    return evaluation


def evaluation_settings(config: Config) -> dict:
    """What the numbers were measured with, stored next to them."""
    return {
        "epsilons": sorted(float(e) for e in config.eval_epsilons),  # the config lists 8/255 last
        "pgd_steps": config.pgd_steps, "pgd_step_size": "eps/4", "pgd_random_start": True, "seed": config.seed,
        "corruption_severities": list(config.corruption_severities),
    }


def measure(model: torch.nn.Module, val: ImageSet, corrupted: dict[tuple[str, int], np.ndarray], config: Config,
            device: torch.device, seconds: dict[str, float] | None = None, label: str = "",
            sample: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """One checkpoint's clean metrics, attack sweep and corruption accuracy, plus its clean fake probabilities.

    Clean metrics cover all of ``val``; the attacks and ``corrupted`` (made from ``val.images[sample]``) the
    validation indices ``sample`` (default: all), and each corruption's drop is from the sample's clean accuracy.
    """
    seconds = {} if seconds is None else seconds
    sample = np.arange(len(val)) if sample is None else sample
    with timed(seconds, "clean"):
        probs = predict_fake_proba(model, val.images, batch_size=config.eval_batch_size, device=device)
        clean = clean_metrics(val.labels, probs)
    with timed(seconds, "attacks"):
        attacks = attack_sweep(model, val.images[sample], val.labels[sample], evaluation_settings(config)["epsilons"],
                               config.pgd_steps, config.eval_batch_size, config.seed, device, desc=f"{label} attacks")
    with timed(seconds, "corruptions"):
        sample_accuracy = classification_metrics(val.labels[sample], probs[sample])["accuracy"]
        corruptions = corruption_accuracy(model, val.labels[sample], corrupted, sample_accuracy,
                                          config.eval_batch_size, device)
    mean_accuracy = float(np.mean([accuracy for c in corruptions.values() for accuracy in c["accuracy"]]))
    return {"clean": clean, "attacks": attacks, "corruptions": corruptions,
            "corrupted_mean_accuracy": mean_accuracy}, probs


# ---------------------------------------------------------------------------------------------
# Measures
# ---------------------------------------------------------------------------------------------

def clean_metrics(labels: np.ndarray, fake_probs: np.ndarray) -> dict:
    """Accuracy, precision, recall, F1, ROC-AUC, confusion matrix [[TN, FP], [FN, TP]] and sklearn's report."""
    predictions = (np.asarray(fake_probs) >= 0.5).astype(int)
    classes = list(range(len(CLASS_NAMES)))
    return {
        **classification_metrics(labels, fake_probs),
        "confusion_matrix": confusion_matrix(labels, predictions, labels=classes).tolist(),
        "classification_report": classification_report(labels, predictions, labels=classes,
                                                        target_names=list(CLASS_NAMES), output_dict=True,
                                                        zero_division=0),
    }


def attack_sweep(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, epsilons: Sequence[float],
                 pgd_steps: int, batch_size: int, seed: int, device: torch.device, desc: str = "attacks") -> dict:
    """Accuracy under white-box FGSM and PGD (random start, step eps/4) at each epsilon; eps 0 is clean.

    Returns {"epsilons": [...], "fgsm": [accuracy...], "pgd": [accuracy...], "seconds": {attack: s}}.
    """
    generator = torch.Generator().manual_seed(seed)
    pixels, targets = to_tensor(images), torch.from_numpy(np.asarray(labels))
    correct = {attack: np.zeros(len(epsilons), dtype=np.int64) for attack in ATTACKS}
    seconds = dict.fromkeys(ATTACKS, 0.0)
    batches = list(zip(pixels.split(batch_size), targets.split(batch_size)))
    with eval_mode(model), tqdm(total=len(epsilons) * len(batches), desc=desc, leave=False) as progress:
        for i, eps in enumerate(epsilons):
            for x, y in batches:
                x, y = to_float(x, device), y.to(device)
                if eps == 0:
                    hits = count_correct(model, x, y)
                    correct["fgsm"][i] += hits
                    correct["pgd"][i] += hits
                else:
                    for attack in ATTACKS:
                        started = time.perf_counter()
                        adversarial = (fgsm(model, x, y, eps) if attack == "fgsm" else
                                       pgd(model, x, y, eps, steps=pgd_steps, random_start=True, generator=generator))
                        correct[attack][i] += count_correct(model, adversarial, y)
                        seconds[attack] += time.perf_counter() - started
                progress.update()
    total = max(1, len(labels))
    return {"epsilons": [float(e) for e in epsilons],
            **{attack: (correct[attack] / total).tolist() for attack in ATTACKS},
            "seconds": {attack: round(s, 2) for attack, s in seconds.items()}}


def corrupted_sets(images: np.ndarray, severities: Sequence[int], seed: int) -> dict[tuple[str, int], np.ndarray]:
    """Every corruption at every severity, made once and shared by all models and checkpoints."""
    return {(name, severity): corrupt(images, name, severity, seed) for name in CORRUPTIONS for severity in severities}


def corruption_accuracy(model: torch.nn.Module, labels: np.ndarray, corrupted: dict[tuple[str, int], np.ndarray],
                        clean_accuracy: float, batch_size: int, device: torch.device) -> dict:
    """Per corruption: its parameter, severities, the value used at each, accuracy and drop from clean."""
    table: dict[str, dict] = {}
    for (name, severity), images in corrupted.items():
        probs = predict_fake_proba(model, images, batch_size=batch_size, device=device)
        accuracy = classification_metrics(labels, probs)["accuracy"]
        entry = table.setdefault(name, {"parameter": CORRUPTIONS[name].parameter, "severities": [], "values": [],
                                        "accuracy": [], "drop": []})
        entry["severities"].append(severity)
        entry["values"].append(CORRUPTIONS[name].levels[severity - 1])
        entry["accuracy"].append(accuracy)
        entry["drop"].append(clean_accuracy - accuracy)
    return table


def adversarial_examples(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, epsilons: Sequence[float],
                         device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """FGSM images (E, N, H, W, 3) in [0, 1] and their fake probabilities (E, N), for the example grids."""
    x, y = to_float(to_tensor(images), device), torch.from_numpy(np.asarray(labels)).to(device)
    adversarial, probs = [], []
    with eval_mode(model):
        for eps in epsilons:
            x_adv = fgsm(model, x, y, eps)
            with torch.no_grad():
                probs.append(fake_proba(model, x_adv).cpu().numpy())
            adversarial.append(x_adv.permute(0, 2, 3, 1).cpu().numpy())
    return np.stack(adversarial), np.stack(probs)


def explain_model(model: torch.nn.Module, val: ImageSet, indices: np.ndarray, device: torch.device, title: str,
                  path: Path) -> dict:
    """Grad-CAM for the predicted class of each chosen image, drawn to ``path``."""
    x = to_float(to_tensor(val.images[indices]), device)
    cams = gradcam(model, x)
    with torch.no_grad(), eval_mode(model):
        probs = fake_proba(model, x).cpu().numpy()
    covers = " (the pixel backbone's; the spectrum head's logits are not mapped)" if model.spectrum is not None else ""
    plot_gradcam(x.permute(0, 2, 3, 1).cpu().numpy(), cams, val.labels[indices], probs,
                 f"{title}: Grad-CAM of the predicted class{covers}", path)
    return {"layer": target_layer_name(model, x.shape[-1]), "images": [val.paths[i] for i in indices],
            "spectrum_head": model.spectrum is not None}


def evaluation_sample(labels: np.ndarray, max_images: int, seed: int) -> np.ndarray:
    """Sorted validation indices for the attack and corruption sweeps: all of them when there are at most
    ``max_images`` (or it is 0), else a seeded sample of that size with the split's share of each class."""
    indices = np.arange(len(labels))
    if not max_images or len(labels) <= max_images:
        return indices
    sample, _ = train_test_split(indices, train_size=max_images, random_state=seed, stratify=labels)
    return np.sort(sample)


def showcase_indices(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` validation indices alternating real and fake (seeded), so every figure shows both classes."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(np.asarray(labels) == label)) for label in range(len(CLASS_NAMES))]
    alternating = [i for pair in itertools.zip_longest(*per_class) for i in pair if i is not None]
    return np.array(alternating[:count], dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def _log_frontier(frontier: dict) -> None:
    for name, operating in frontier["operating_points"].items():
        point = frontier["points"][operating["point"]]
        log.info("ensemble, %s (%s): clean %.4f | attacked whole, PGD 2/255 %.4f, 8/255 %.4f", name,
                 weight_label(point["weights"]), point["clean_accuracy"], operating["pgd_2/255"],
                 operating["pgd_8/255"])
    log.info("frontier measured in %.0fs", frontier["seconds"])


def _log_summary(name: str, evaluation: dict) -> None:
    eps = headline_epsilons(evaluation["settings"]["epsilons"])[0]
    for phase in PHASES:
        if phase in evaluation:
            result = evaluation[phase]
            log.info("%s %s: clean accuracy %.4f | PGD at %s: %.4f | corrupted mean %.4f", name, phase,
                     result["clean"]["accuracy"], eps_label(eps), attack_accuracy(result, "pgd", eps),
                     result["corrupted_mean_accuracy"])
    log.info("%s: evaluated in %.0fs (%s)", name, sum(evaluation["seconds"].values()),
             ", ".join(f"{key} {value:.0f}s" for key, value in evaluation["seconds"].items()))
