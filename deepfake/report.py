"""visualizations/report.md: every number of the run in tables, next to its figures.

The report is rebuilt from results.json alone (evaluation and the ensemble both call it), so it
always shows the latest numbers and never needs a model; figures are linked relative to it.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from .cut import clean_score, weight_label
from .data import CLASS_NAMES
from .io import write_text
from .plots import FRONTIER_NAME, OVERVIEW_NAME, PHASE_SHORT, attack_accuracy, eps_label, figure_names, headline_epsilons
from .results import kept_epochs

REPORT_NAME = "report.md"
CLEAN_METRICS = ("accuracy", "precision", "recall", "f1", "auc")
FIGURE_TITLES = {
    "training_curves": "Training curves",
    "base_evaluation": "Clean validation, before fine-tuning",
    "final_evaluation": "Clean validation, after fine-tuning",
    "comparison": "Accuracy under attack, before vs after",
    "adv_base": "FGSM examples, before fine-tuning",
    "adv_final": "FGSM examples, after fine-tuning",
    "corruptions": "Corruptions",
    "gradcam": "Grad-CAM",
}


def write_report(results: dict, viz_dir: str | Path) -> Path:
    """Write ``viz_dir/report.md`` from the results dict; works before evaluation and without an ensemble."""
    viz_dir = Path(viz_dir)
    models = results.get("models", {})
    sections = [
        "# Deepfake detection: evaluation report",
        _run_info(results),
        _folds(results) if "folds" in results else _summary(models, viz_dir),
        _ensemble(results.get("ensemble")),
        _frontier(results, viz_dir),
        *(_model_section(name, entry, viz_dir) for name, entry in models.items()),
    ]
    path = viz_dir / REPORT_NAME
    write_text(path, "\n\n".join(section for section in sections if section) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------

def _run_info(results: dict) -> str:
    config = results.get("config", {})
    versions = ", ".join(f"{name} {version}" for name, version in results.get("versions", {}).items())
    info = [
        ("report written", datetime.now(timezone.utc).isoformat(timespec="seconds")),
        ("training run started", results.get("started")),
        ("config preset", config.get("preset")),
        ("seed", results.get("seed", config.get("seed"))),
        ("device", results.get("device")),
        ("machine", results.get("machine")),
        ("versions", versions or None),
        ("data", results.get("data", {}).get("data_dir")),
        ("adversarial training samples", _crafted(results.get("adversarial_samples"))),
    ]
    lines = ["## Run", _table(("", "value"), [(key, _text(value)) for key, value in info if value is not None])]
    counts = results.get("data", {}).get("counts", {})
    if counts:
        rows = [(split, *(by_class.get(c, 0) for c in CLASS_NAMES), sum(by_class.values())) for split, by_class in
                counts.items()]
        lines += ["### Images", _table(("set", *CLASS_NAMES, "total"), rows)]
    if results.get("timings"):
        lines += ["### Timings", _table(("stage", "seconds"), [(k, f"{v:.1f}") for k, v in results["timings"].items()])]
    return "\n\n".join(lines)


def _summary(models: dict, viz_dir: Path) -> str:
    evaluated = {name: entry["evaluation"] for name, entry in models.items() if entry.get("evaluation")}
    if not evaluated:
        return "## Summary\n\nNo model has been evaluated yet: run `python deepfake_detection.py --evaluate-only`."
    epsilons = headline_epsilons(next(iter(evaluated.values()))["settings"]["epsilons"])
    headers = ["model", "clean acc", "clean AUC"]
    headers += [f"{attack} {eps_label(eps)}" for eps in epsilons for attack in ("FGSM", "PGD")]
    headers += ["corrupted (mean)"]
    rows = []
    for name, evaluation in evaluated.items():
        phases = [p for p in PHASE_SHORT if p in evaluation]
        cells = [name, _before_after(evaluation, phases, lambda e: e["clean"]["accuracy"]),
                 _before_after(evaluation, phases, lambda e: e["clean"]["auc"])]
        for eps in epsilons:
            for attack in ("fgsm", "pgd"):
                cells.append(_before_after(evaluation, phases, lambda e: attack_accuracy(e, attack, eps)))
        cells.append(_before_after(evaluation, phases, lambda e: e["corrupted_mean_accuracy"]))
        rows.append(cells)
    lines = ["## Summary", "Validation accuracy before → after adversarial fine-tuning (white-box attacks on each "
             "checkpoint; PGD with random start, step eps/4).", _table(headers, rows)]
    if (viz_dir / OVERVIEW_NAME).exists():
        lines.append(f"![Models overview]({OVERVIEW_NAME})")
    return "\n\n".join(lines)


def _folds(results: dict) -> str:
    folds = results["folds"]
    rows = []
    for name, entry in folds["models"].items():
        oof = entry["oof"]
        rows.append((name, _with_interval(oof["accuracy"], oof["accuracy_ci"]),
                     _with_interval(oof["auc"], oof["auc_ci"]),
                     " / ".join(_num(a, 3) for a in entry["fold_accuracy"])))
    links = ", ".join(f"[fold {i}](fold_{i}/{REPORT_NAME})" for i in range(folds["k"]))
    return "\n\n".join([
        f"## Out-of-fold validation ({folds['k']} folds, {folds['n_images']} images)",
        "Each labelled image is scored once, by the fold's model that never trained on it (at 0.5; 95% bootstrap "
        f"intervals). Every image's probabilities: `{folds['oof_file']}` in the run folder. Each fold's own "
        f"report: {links}.",
        _table(("model", "OOF accuracy", "OOF AUC", "accuracy per fold"), rows)])


def _with_interval(value: float | None, interval: list[float] | None) -> str:
    return _num(value) if interval is None else f"{_num(value)} [{_num(interval[0])}, {_num(interval[1])}]"


def _ensemble(ensemble: dict | None) -> str:
    if not ensemble or "val" not in ensemble:
        return ""
    check = ensemble.get("threshold_check") or {}
    crossfit = check.get("val_accuracy_crossfit")
    honest = dict(ensemble["val"], accuracy=crossfit) if crossfit is not None else ensemble["val"]
    label = "**ensemble** (accuracy: cut chosen on other folds)" if crossfit is not None else "**ensemble**"
    rows = [(label, *(_num(honest.get(m)) for m in CLEAN_METRICS), "")]
    members = ensemble.get("members", {})
    for name, metrics in ensemble.get("single", {}).items():
        weight = members.get(name, {}).get("weight")
        rows.append((name, *(_num(metrics.get(m)) for m in CLEAN_METRICS), _num(weight)))
    point = (ensemble.get("operating_point") or {}).get("name")
    weights = f", {ensemble['scheme']} weights" if ensemble.get("scheme") else f", operating point {point}" if point else ""
    lines = [f"## Ensemble vs single models ({ensemble.get('validation', 'validation')}{weights})",
             _table(("model", *CLEAN_METRICS, "weight"), rows)]
    if check:
        lines.append(f"The ensemble calls an image fake from probability {ensemble['threshold']:.4f} "
                     f"({ensemble['threshold_from']}; the single models from 0.5). Validation accuracy at 0.5: "
                     f"{_num(check['val_accuracy_at_0.5'])}" + ("" if crossfit is None else
                     f"; at the cut chosen on all these images {_num(ensemble['val'].get('accuracy'))}, which "
                     f"flatters it: the table shows each image called at a cut chosen on the other folds") + ".")
    better = ensemble.get("better_single")
    if better:
        lines.append(f"On validation {better['name']} alone ({_num(better['val_accuracy'])}) beats the ensemble "
                     f"({_num(better['ensemble_val_accuracy'])}): `python ensemble.py --checkpoints "
                     f"{better['checkpoint']}` submits it.")
    if ensemble.get("test"):
        test = ensemble["test"]
        rows = [("**ensemble**", *(_num(test["ensemble"].get(m)) for m in CLEAN_METRICS))]
        rows += [(name, *(_num(metrics.get(m)) for m in CLEAN_METRICS)) for name, metrics in test["single"].items()]
        lines += ["Labelled test set:", _table(("model", *CLEAN_METRICS), rows)]
    if ensemble.get("submission"):
        lines.append(f"Submission: `{ensemble['submission']}`")
    return "\n\n".join(lines)


def _frontier(results: dict, viz_dir: Path) -> str:
    """The operating points and each member alone, the ensemble attacked whole, and the frontier figure."""
    frontier = results.get("frontier")
    if not frontier:
        return ""
    points, steps = frontier["points"], frontier["pgd_steps"]
    submitted = ((results.get("ensemble") or {}).get("operating_point") or {}).get("weights")
    rows = []
    for name, operating in frontier["operating_points"].items():
        point = points[operating["point"]]
        rows.append((f"**{name}**" + (" (submitted)" if point["weights"] == submitted else ""), *_point_row(point),
                     _num(operating.get("pgd_2/255")), _num(operating.get("apgd_ce_8/255"))))
    rows += [(f"{next(n for n, w in p['weights'].items() if w == 1.0)} alone", *_point_row(p), "", "")
             for p in points if max(p["weights"].values()) == 1.0]
    lines = ["## The ensemble attacked whole: its accuracy-robustness frontier",
             f"Each weighting of the members is attacked as one model, exactly as submitted (weights, cut, flip "
             f"TTA): {frontier['attack']}, on {frontier['n_sample']} validation images; clean accuracy on "
             f"{frontier['n_val']}, each image called at a cut chosen on the other folds. The weighting itself is "
             f"chosen on these images, so the figures flatter the chosen point a little. "
             f"`python ensemble.py --operating-point accurate|balanced|robust` picks one.",
             _table(("operating point", "weights", "cut", "clean", "corrupted (mean)", f"PGD-{steps} 8/255",
                     f"PGD-{steps} 2/255", f"APGD-CE-{steps} 8/255"), rows)]
    if (viz_dir / FRONTIER_NAME).exists():
        lines.append(f"![Frontier]({FRONTIER_NAME})")
    return "\n\n".join(lines)


def _point_row(point: dict) -> tuple[str, ...]:
    corrupted = sum(point["corruption_accuracy"].values()) / max(1, len(point["corruption_accuracy"]))
    return (weight_label(point["weights"]), f"{point['threshold']:.3f}", _num(clean_score(point)), _num(corrupted),
            _num(point["pgd_8/255"]))


def _model_section(name: str, entry: dict, viz_dir: Path) -> str:
    lines = [f"## {name}", _training(entry)]
    evaluation = entry.get("evaluation")
    if evaluation:
        phases = [p for p in PHASE_SHORT if p in evaluation]
        lines += [_clean_tables(evaluation, phases), _attack_table(evaluation, phases),
                  _corruption_table(evaluation, phases), _evaluation_notes(evaluation)]
    figures = [(FIGURE_TITLES[key], file) for key, file in figure_names(name).items() if (viz_dir / file).exists()]
    if figures:
        lines += ["### Figures", *(f"**{title}**\n\n![{name} {title}]({file})" for title, file in figures)]
    return "\n\n".join(line for line in lines if line)


def _training(entry: dict) -> str:
    rows = []
    for phase, history_key in (("base", "base"), ("final", "finetune")):
        if phase in entry.get("checkpoints", {}):
            rows.append((
                history_key, len(entry.get("history", {}).get(history_key, [])),
                kept_epochs(entry.get("best_epoch"), entry.get("averaged_epochs", 0)) if phase == "base" else "last",
                _num(entry.get("val", {}).get(phase, {}).get("accuracy")),
                _num(entry.get("images_per_second", {}).get(history_key), 1),
                _num(entry.get("wall_seconds", {}).get(history_key), 1), f"`{entry['checkpoints'][phase]}`",
            ))
    if "error" in entry:
        rows.append(("error", "", "", "", "", "", entry["error"]))
    if not rows:
        return ""
    pretrained = "ImageNet-pretrained" if entry.get("pretrained") else "trained from scratch"
    return "\n\n".join([f"### Training ({pretrained})", _table(
        ("phase", "epochs", "kept epoch", "val acc", "images/s", "seconds", "checkpoint"), rows)])


def _clean_tables(evaluation: dict, phases: Sequence[str]) -> str:
    rows = [(metric, *(_num(evaluation[p]["clean"].get(metric)) for p in phases)) for metric in CLEAN_METRICS]
    lines = [f"### Clean validation ({evaluation['n_val']} images)", _table(("metric", *_phase_headers(phases)), rows)]
    confusion_rows, report_rows = [], []
    for phase in phases:
        clean = evaluation[phase]["clean"]
        for label, counts in zip(CLASS_NAMES, clean["confusion_matrix"]):
            confusion_rows.append((PHASE_SHORT[phase], f"true {label}", *counts))
        for label in CLASS_NAMES:
            per_class = clean["classification_report"][label]
            scores = (_num(per_class[key]) for key in ("precision", "recall", "f1-score"))
            report_rows.append((PHASE_SHORT[phase], label, *scores, int(per_class["support"])))
    lines += [
        "Confusion matrices:", _table(("checkpoint", "", *(f"predicted {c}" for c in CLASS_NAMES)), confusion_rows),
        "Classification report:", _table(("checkpoint", "class", "precision", "recall", "F1", "support"), report_rows),
    ]
    return "\n\n".join(lines)


def _attack_table(evaluation: dict, phases: Sequence[str]) -> str:
    settings = evaluation["settings"]
    columns = [(attack, phase) for attack in ("fgsm", "pgd") for phase in phases]
    headers = ["epsilon", *(f"{'FGSM' if a == 'fgsm' else 'PGD-' + str(settings['pgd_steps'])} {PHASE_SHORT[p]}"
                            for a, p in columns)]
    rows = [(eps_label(eps), *(_num(attack_accuracy(evaluation[p], a, eps)) for a, p in columns))
            for eps in settings["epsilons"]]
    return "\n\n".join([
        f"### Accuracy under attack{_sample_note(evaluation)}",
        f"L-inf, [0,1] pixel units; PGD: {settings['pgd_steps']} steps of {settings['pgd_step_size']}, random start "
        f"(seed {settings['seed']}); eps 0 is the clean accuracy.",
        _table(headers, rows),
    ])


def _corruption_table(evaluation: dict, phases: Sequence[str]) -> str:
    reference = evaluation[phases[-1]]["corruptions"]
    rows = []
    for name, entry in reference.items():
        for i, (severity, value) in enumerate(zip(entry["severities"], entry["values"])):
            rows.append((name, severity, f"{entry['parameter']} {value:g}",
                         *(_num(evaluation[p]["corruptions"][name]["accuracy"][i]) for p in phases),
                         *(_signed(-evaluation[p]["corruptions"][name]["drop"][i]) for p in phases)))
    rows.append(("**mean**", "", "", *(_num(evaluation[p]["corrupted_mean_accuracy"]) for p in phases),
                 *("" for _ in phases)))
    headers = ("corruption", "severity", "parameter", *(f"acc {h}" for h in _phase_headers(phases)),
               *(f"change {h}" for h in _phase_headers(phases)))
    return "\n\n".join([f"### Corruptions{_sample_note(evaluation)}", _table(headers, rows)])


def _sample_note(evaluation: dict) -> str:
    """The size of the sweeps' sample, where it is not the whole validation split (evaluate.evaluation_sample)."""
    n_sample = evaluation.get("n_sample", evaluation["n_val"])
    return "" if n_sample == evaluation["n_val"] else f" ({n_sample} images: a seeded sample, stratified by class)"


def _evaluation_notes(evaluation: dict) -> str:
    notes = []
    if "gradcam" in evaluation:
        cam = evaluation["gradcam"]
        notes.append(f"Grad-CAM layer `{cam['layer']}` ({cam['phase']} checkpoint)"
                     + (": it maps the pixel backbone only, not the spectrum head's share of the call."
                        if cam.get("spectrum_head") else "."))
    seconds = evaluation.get("seconds", {})
    if seconds:
        parts = ", ".join(f"{key} {value:.1f}s" for key, value in seconds.items())
        notes.append(f"Evaluated on {evaluation['device']} in {sum(seconds.values()):.1f}s ({parts}), "
                     f"{evaluation['evaluated']}.")
    return " ".join(notes)


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------

def _table(headers: Sequence, rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_text(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _phase_headers(phases: Sequence[str]) -> list[str]:
    return [f"{PHASE_SHORT[p]} fine-tuning" for p in phases]


def _before_after(evaluation: dict, phases: Sequence[str], value) -> str:
    return " → ".join(_num(value(evaluation[p])) for p in phases)


def _num(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _signed(value: float) -> str:
    return f"{value + 0.0:+.4f}"  # + 0.0 turns -0.0 into 0.0


def _text(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _crafted(samples: dict | None) -> str | None:
    if not samples:
        return None
    budgets = ", ".join(eps_label(eps) for eps in samples.get("epsilons", []))
    return f"{samples.get('count')} FGSM images crafted by {samples.get('crafted_by')} at eps {budgets}"
