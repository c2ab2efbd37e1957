"""The figures a competitor looks at, drawn from the results dict (plus images where a figure shows them).

Figures are built on ``matplotlib.figure.Figure`` rather than pyplot: no GUI backend is needed,
nothing is registered globally, so a long evaluation does not accumulate open figures, and a
notebook importing this module keeps its own backend. Every file is written atomically.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure
from pytorch_grad_cam.utils.image import show_cam_on_image
from sklearn.metrics import roc_curve

from .cut import clean_score, weight_label
from .data import CLASS_NAMES
from .io import atomic_path

DPI = 110
PHASE_TITLES = {"base": "before adversarial fine-tuning", "final": "after adversarial fine-tuning"}
PHASE_SHORT = {"base": "before", "final": "after"}
PHASE_COLORS = {"base": "#7f7f7f", "final": "#d62728"}
ATTACK_TITLES = {"fgsm": "FGSM", "pgd": "PGD"}
RIGHT, WRONG = "#1a7f37", "#d62728"
OVERVIEW_NAME = "models_overview.png"
FRONTIER_NAME = "ensemble_frontier.png"
OPERATING_MARKERS = {"accurate": "s", "balanced": "D", "robust": "^"}
HEADLINE_EPSILONS = (8 / 255, 0.03)  # the field's standard L-inf budget, and one the fine-tuning trained at


# ---------------------------------------------------------------------------------------------
# Names and labels shared with the report
# ---------------------------------------------------------------------------------------------

def figure_names(model: str) -> dict[str, str]:
    """File name (inside viz_dir) of every per-model figure, keyed by what it shows."""
    return {
        "base_evaluation": f"{model}_base_evaluation.png",
        "final_evaluation": f"{model}_final_evaluation.png",
        "adv_base": f"{model}_adv_BEFORE.png",
        "adv_final": f"{model}_adv_AFTER.png",
        "comparison": f"{model}_comparison.png",
        "gradcam": f"{model}_gradcam.png",
        "corruptions": f"{model}_corruptions.png",
        "training_curves": f"{model}_training_curves.png",
    }


def eps_label(eps: float) -> str:
    """0.0314 -> '8/255'; other budgets as short decimals."""
    grey_levels = eps * 255
    if eps > 0 and abs(grey_levels - round(grey_levels)) < 1e-6 and not math.isclose(eps, round(eps, 2)):
        return f"{round(grey_levels)}/255"
    return f"{eps:g}"


def headline_epsilons(epsilons: Sequence[float]) -> list[float]:
    """The budgets summaries quote: 8/255 and 0.03 where evaluated, else the largest one."""
    chosen = [e for e in epsilons if any(math.isclose(e, h, abs_tol=1e-9) for h in HEADLINE_EPSILONS)]
    return sorted(chosen, reverse=True) or [max(epsilons)]


def attack_accuracy(phase_evaluation: dict, attack: str, eps: float) -> float | None:
    attacks = phase_evaluation.get("attacks", {})
    for value, accuracy in zip(attacks.get("epsilons", []), attacks.get(attack, [])):
        if math.isclose(value, eps, abs_tol=1e-9):
            return accuracy
    return None


# ---------------------------------------------------------------------------------------------
# Per-model figures
# ---------------------------------------------------------------------------------------------

def plot_evaluation(labels: np.ndarray, fake_probs: np.ndarray, clean: dict, title: str, path: str | Path) -> Path:
    """ROC with AUC, confusion matrix and the fake-probability histogram per true class."""
    with _figure(1, 3, (15, 4.4)) as (fig, (roc_ax, cm_ax, hist_ax)):
        if clean.get("auc") is not None:
            fpr, tpr, _ = roc_curve(labels, fake_probs)
            roc_ax.plot(fpr, tpr, color=PHASE_COLORS["final"], lw=2, label=f"AUC = {clean['auc']:.4f}")
            roc_ax.legend(loc="lower right")
        else:
            roc_ax.text(0.5, 0.5, "ROC undefined:\none class only", ha="center", va="center")
        roc_ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
        roc_ax.set(title="ROC curve (fake = positive)", xlabel="False positive rate", ylabel="True positive rate",
                   xlim=(0, 1), ylim=(0, 1.01))

        sns.heatmap(np.array(clean["confusion_matrix"]), annot=True, fmt="d", cmap="Blues", cbar=False, ax=cm_ax,
                    xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES, annot_kws={"size": 14})
        cm_ax.set(title="Confusion matrix", xlabel="Predicted", ylabel="True")

        bins, labels, fake_probs = np.linspace(0, 1, 21), np.asarray(labels), np.asarray(fake_probs)
        for label, name in enumerate(CLASS_NAMES):
            hist_ax.hist(fake_probs[labels == label], bins=bins, alpha=0.6, label=f"true {name}")
        hist_ax.axvline(0.5, color="black", ls="--", lw=1, label="threshold")
        hist_ax.set(title="Predicted fake probability", xlabel="P(fake)", ylabel="Images")
        hist_ax.legend()
        fig.suptitle(f"{title} | accuracy {clean['accuracy']:.4f}, F1 {clean['f1']:.4f}", fontsize=13)
    return save_figure(fig, path)


def plot_adversarial_grid(images: np.ndarray, fake_probs: np.ndarray, labels: np.ndarray, epsilons: Sequence[float],
                          title: str, path: str | Path) -> Path:
    """Rows = images, columns = epsilons; each cell shows the prediction and its confidence, wrong in red.

    ``images``: (E, N, H, W, 3) floats in [0, 1]; ``fake_probs``: (E, N).
    """
    n_eps, n_images = fake_probs.shape
    with _figure(n_images, n_eps, (max(7.0, 1.9 * n_eps + 0.6), 2.0 * n_images + 0.6), style="white") as (fig, axes):
        axes = np.asarray(axes).reshape(n_images, n_eps)
        for col, eps in enumerate(epsilons):
            for row in range(n_images):
                ax = axes[row, col]
                prob = float(fake_probs[col, row])
                predicted = int(prob >= 0.5)
                wrong = predicted != labels[row]
                ax.imshow(images[col, row], interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"{CLASS_NAMES[predicted]} {max(prob, 1 - prob):.0%}", fontsize=10,
                             color=WRONG if wrong else RIGHT, fontweight="bold" if wrong else "normal")
                for spine in ax.spines.values():
                    spine.set_edgecolor(WRONG if wrong else "#cccccc")
                    spine.set_linewidth(3 if wrong else 1)
                if col == 0:
                    ax.set_ylabel(f"true {CLASS_NAMES[labels[row]]}", fontsize=10)
                if row == n_images - 1:
                    ax.set_xlabel(f"eps = {eps_label(eps)}", fontsize=10)
        fig.suptitle(f"{title}\nprediction and confidence per cell, wrong ones in red", fontsize=12)
    return save_figure(fig, path)


def plot_attack_comparison(evaluation: dict, model: str, path: str | Path) -> Path:
    """Accuracy against epsilon, before and after fine-tuning, one panel per attack."""
    phases = [p for p in PHASE_TITLES if p in evaluation]
    with _figure(1, 2, (12, 4.4)) as (fig, axes):
        for ax, attack in zip(axes, ATTACK_TITLES):
            for phase in phases:
                sweep = evaluation[phase]["attacks"]
                ax.plot(sweep["epsilons"], sweep[attack], marker="o", lw=2, color=PHASE_COLORS[phase],
                        label=PHASE_TITLES[phase])
            epsilons = evaluation[phases[0]]["attacks"]["epsilons"]
            ax.axhline(0.5, color="black", ls=":", lw=1, label="chance")
            ax.set_xticks(epsilons, [eps_label(e) for e in epsilons], rotation=45)
            steps = f"-{evaluation['settings']['pgd_steps']}" if attack == "pgd" else ""
            ax.set(title=f"{ATTACK_TITLES[attack]}{steps}", xlabel="epsilon (L-inf, [0,1] pixels)",
                   ylabel="Validation accuracy", ylim=(0, 1.02))
            ax.legend()
        fig.suptitle(f"{model}: adversarial robustness before vs after fine-tuning", fontsize=13)
    return save_figure(fig, path)


def plot_gradcam(images: np.ndarray, cams: np.ndarray, labels: np.ndarray, fake_probs: np.ndarray, title: str,
                 path: str | Path) -> Path:
    """Per image: the original, the Grad-CAM heat-map, and the overlay with the prediction."""
    n_images = len(images)
    with _figure(n_images, 3, (7.5, 2.4 * n_images + 0.6), style="white") as (fig, axes):
        axes = np.asarray(axes).reshape(n_images, 3)
        for row in range(n_images):
            prob = float(fake_probs[row])
            predicted = int(prob >= 0.5)
            wrong = predicted != labels[row]
            overlay = show_cam_on_image(images[row].astype(np.float32), cams[row], use_rgb=True)
            heat = axes[row, 1].imshow(cams[row], cmap="jet", vmin=0, vmax=1)
            axes[row, 0].imshow(images[row], interpolation="nearest")
            axes[row, 2].imshow(overlay)
            axes[row, 0].set_title(f"true {CLASS_NAMES[labels[row]]}", fontsize=10)
            axes[row, 1].set_title("Grad-CAM", fontsize=10)
            axes[row, 2].set_title(f"predicted {CLASS_NAMES[predicted]} {max(prob, 1 - prob):.0%}", fontsize=10,
                                   color=WRONG if wrong else RIGHT)
            for ax in axes[row]:
                ax.axis("off")
        fig.colorbar(heat, ax=axes, shrink=min(0.5, 2.5 / n_images), label="Grad-CAM weight")
        fig.suptitle(title, fontsize=12)
    return save_figure(fig, path)


def plot_corruptions(evaluation: dict, model: str, path: str | Path) -> Path:
    """Accuracy per corruption and severity (clean in the first column), before and after fine-tuning."""
    phases = [p for p in PHASE_TITLES if p in evaluation]
    with _figure(1, len(phases), (6.5 * len(phases), 4.8)) as (fig, axes):
        for ax, phase in zip(np.atleast_1d(axes), phases):
            table, rows, columns = _corruption_table(evaluation[phase])
            sns.heatmap(table, annot=True, fmt=".2f", cmap="RdYlGn", vmin=0.5, vmax=1.0, ax=ax, xticklabels=columns,
                        yticklabels=rows, cbar=phase == phases[-1], cbar_kws={"label": "accuracy"})
            ax.set(title=f"{PHASE_TITLES[phase]} (mean {evaluation[phase]['corrupted_mean_accuracy']:.3f})",
                   xlabel="Severity", ylabel="Corruption (parameter per severity)")
        fig.suptitle(f"{model}: validation accuracy under image corruptions", fontsize=13)
    return save_figure(fig, path)


def plot_training_curves(history: dict, model: str, path: str | Path) -> Path:
    """Loss, accuracy and validation AUC/F1 per epoch; the fine-tuning epochs follow the base ones, shaded."""
    base, finetune = history.get("base", []), history.get("finetune", [])
    rows = base + finetune
    epochs = np.arange(1, len(rows) + 1)
    series = {key: [np.nan if row.get(key) is None else row[key] for row in rows]
              for key in ("train_loss", "train_acc", "val_acc", "val_f1", "val_auc")}
    panels = [
        ("Training loss", "Cross-entropy", {"train loss": "train_loss"}),
        ("Accuracy", "Accuracy", {"train": "train_acc", "validation": "val_acc"}),
        ("Validation ranking", "Score", {"val ROC-AUC": "val_auc", "val F1": "val_f1"}),
    ]
    with _figure(1, 3, (15, 4.2)) as (fig, axes):
        for ax, (title, ylabel, lines) in zip(axes, panels):
            for label, key in lines.items():
                ax.plot(epochs, series[key], marker="o", ms=3, lw=1.6, label=label)
            if finetune:
                ax.axvspan(len(base) + 0.5, len(rows) + 0.5, color="orange", alpha=0.12, label="adversarial fine-tune")
            ax.set(title=title, xlabel="Epoch (base, then fine-tune)", ylabel=ylabel)
            ax.legend(fontsize=9)
        fig.suptitle(f"{model}: training curves ({len(base)} base + {len(finetune)} fine-tune epochs)", fontsize=13)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Across models
# ---------------------------------------------------------------------------------------------

def plot_models_overview(results: dict, viz_dir: str | Path) -> Path:
    """Every model (final checkpoints) on clean, attacked and corrupted accuracy, next to the clean
    validation metrics of the models and, when one was built, the ensemble."""
    evaluated = {name: entry["evaluation"] for name, entry in results.get("models", {}).items()
                 if "final" in entry.get("evaluation", {})}
    ensemble = results.get("ensemble")
    with _figure(1, 2, (16, 5.2)) as (fig, (robust_ax, clean_ax)):
        measures = _overview_measures(evaluated)
        deployed = _deployed_measures(results, next(iter(measures.values()), {}))
        if deployed:
            measures[deployed.pop("name")] = deployed
        width = 0.8 / max(1, len(measures))
        for i, (name, values) in enumerate(measures.items()):
            bars = robust_ax.bar(np.arange(len(values)) + i * width, list(values.values()), width, label=name,
                                 hatch="//" if name.startswith("ensemble") else None)
            robust_ax.bar_label(bars, fmt="%.2f", fontsize=8)
        labels = list(next(iter(measures.values()), {}))
        robust_ax.set_xticks(np.arange(len(labels)) + width * (len(measures) - 1) / 2, labels)
        robust_ax.axhline(0.5, color="black", ls=":", lw=1)
        robust_ax.set(title="After fine-tuning: clean, attacked, corrupted", ylabel="Validation accuracy",
                      ylim=(0, 1.08))
        if measures:
            robust_ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(measures), fontsize=9)
        else:
            robust_ax.text(0.5, 0.5, "no evaluated models", ha="center", transform=robust_ax.transAxes)

        clean = {name: ev["final"]["clean"] for name, ev in evaluated.items()}
        if ensemble and "val" in ensemble:
            crossfit = (ensemble.get("threshold_check") or {}).get("val_accuracy_crossfit")
            honest = ensemble["val"] if crossfit is None else dict(ensemble["val"], accuracy=crossfit)
            clean["ensemble" if crossfit is None else "ensemble (accuracy cross-fitted)"] = honest
        metrics = ("accuracy", "f1", "auc")
        width = 0.8 / max(1, len(clean))
        for i, (name, values) in enumerate(clean.items()):
            heights = [np.nan if values.get(m) is None else values[m] for m in metrics]
            bars = clean_ax.bar(np.arange(len(metrics)) + i * width, heights, width, label=name,
                                hatch="//" if name.startswith("ensemble") else None)
            clean_ax.bar_label(bars, fmt="%.3f", fontsize=8)
        clean_ax.set_xticks(np.arange(len(metrics)) + width * (len(clean) - 1) / 2, ["accuracy", "F1", "ROC-AUC"])
        clean_ax.axhline(0.5, color="black", ls=":", lw=1)
        clean_ax.set(title="Clean validation metrics" + (" (with ensemble)" if ensemble else ""), ylabel="Score",
                     ylim=(0, 1.08))
        if clean:
            clean_ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(clean), fontsize=9)
        fig.suptitle("Models overview", fontsize=14)
    return save_figure(fig, Path(viz_dir) / OVERVIEW_NAME)


def plot_frontier(results: dict, viz_dir: str | Path) -> Path | None:
    """The ensemble's accuracy-robustness frontier: a point per weighting of its members (each alone included),
    clean validation accuracy against accuracy under PGD at 8/255 attacked whole, the operating points and
    the submitted weighting marked. None when the run has no frontier yet."""
    frontier = results.get("frontier")
    if not frontier:
        return None
    points = frontier["points"]
    clean = [clean_score(p) for p in points]
    attacked = [p["pgd_8/255"] for p in points]
    submitted = (results.get("ensemble") or {}).get("operating_point") or {}
    with _figure(1, 1, (8, 6)) as (fig, ax):
        ax.plot(attacked, clean, "o", color="#1f77b4", alpha=0.6, label="a weighting of the members")
        for p, x, y in zip(points, attacked, clean):
            ax.annotate(weight_label(p["weights"]), (x, y), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
        for name, operating in frontier["operating_points"].items():
            i = operating["point"]
            ax.plot(attacked[i], clean[i], OPERATING_MARKERS.get(name, "o"), ms=11, mfc="none", mew=1.5,
                    label=f"operating point: {name}")
        if submitted.get("weights") in [p["weights"] for p in points]:
            i = [p["weights"] for p in points].index(submitted["weights"])
            ax.plot(attacked[i], clean[i], "*", ms=16, color="#d62728", label=f"submitted ({submitted['name']})")
        ax.set(xlabel=f"validation accuracy under PGD-{frontier['pgd_steps']} at 8/255, attacked whole ({frontier['n_sample']} images)",
               ylabel=f"clean validation accuracy, cut cross-fitted ({frontier['n_val']} images)",
               xlim=(0, max(1e-3, max(attacked)) * 1.15 + 0.02), title="The ensemble's accuracy-robustness frontier")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8)  # below: no point hidden
    return save_figure(fig, Path(viz_dir) / FRONTIER_NAME)


def _overview_measures(evaluated: dict) -> dict[str, dict[str, float]]:
    measures = {}
    for name, evaluation in evaluated.items():
        final = evaluation["final"]
        values = {"clean": final["clean"]["accuracy"]}
        for eps in headline_epsilons(final["attacks"]["epsilons"]):
            values[f"FGSM {eps_label(eps)}"] = attack_accuracy(final, "fgsm", eps)
            values[f"PGD {eps_label(eps)}"] = attack_accuracy(final, "pgd", eps)
        values["corrupted (mean)"] = final["corrupted_mean_accuracy"]
        measures[name] = values
    return measures


def _deployed_measures(results: dict, member_measures: dict[str, float]) -> dict | None:
    """The submitted operating point (the default one before ``ensemble.py`` ran) on the members' measures:
    clean accuracy (cut cross-fitted), PGD 8/255 as PGD on the ensemble attacked whole, the corruptions' mean;
    the rest not measured. None without a frontier or with one member."""
    frontier = results.get("frontier")
    if not frontier or len(frontier["members"]) < 2 or not member_measures:
        return None
    name = ((results.get("ensemble") or {}).get("operating_point") or {}).get("name")
    name = name if name in frontier["operating_points"] else next(iter(frontier["operating_points"]))
    point = frontier["points"][frontier["operating_points"][name]["point"]]
    values = {
        "clean": clean_score(point),
        f"PGD {eps_label(8 / 255)}": point["pgd_8/255"],
        "corrupted (mean)": float(np.mean(list(point["corruption_accuracy"].values()))),
    }
    return {"name": f"ensemble, {name} (attacked whole)",
            **{key: values.get(key, np.nan) for key in member_measures}}


def _corruption_table(phase_evaluation: dict) -> tuple[np.ndarray, list[str], list[str]]:
    corruptions = phase_evaluation["corruptions"]
    severities = next(iter(corruptions.values()))["severities"]
    rows = [f"{name} ({'/'.join(f'{v:g}' for v in entry['values'])})" for name, entry in corruptions.items()]
    table = np.array([[phase_evaluation["clean"]["accuracy"], *entry["accuracy"]] for entry in corruptions.values()])
    return table, rows, ["clean", *(f"s{s}" for s in severities)]


# ---------------------------------------------------------------------------------------------
# One image's call (predict.py --explain)
# ---------------------------------------------------------------------------------------------

def plot_call(image: np.ndarray, title: str, overlays: dict[str, np.ndarray], path: str | Path) -> Path:
    """The image as the models saw it beside one Grad-CAM overlay per model (panel title -> map in [0, 1])."""
    with _figure(1, 1 + len(overlays), (2.4 * (1 + len(overlays)), 3.0), style="white") as (fig, axes):
        axes[0].imshow(image, interpolation="nearest")
        axes[0].set_title("image", fontsize=9)
        for ax, (label, cam) in zip(axes[1:], overlays.items()):
            ax.imshow(show_cam_on_image(image.astype(np.float32), cam, use_rgb=True), interpolation="nearest")
            ax.set_title(label, fontsize=8)
        for ax in axes:
            ax.axis("off")
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Figure plumbing
# ---------------------------------------------------------------------------------------------

@contextmanager
def _figure(nrows: int, ncols: int, size: tuple[float, float], style: str = "whitegrid"
            ) -> Iterator[tuple[Figure, object]]:
    with sns.axes_style(style):
        fig = Figure(figsize=size, dpi=DPI, layout="constrained")
        axes = fig.subplots(nrows, ncols)
        yield fig, axes


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write the figure atomically; the format comes from the target's suffix (the temp file has none)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    fig.clear()
    return path
