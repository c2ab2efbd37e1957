"""Figures and report from a results dict: every file written, ensemble optional, tables present."""
import numpy as np
import pytest
from test_evaluate import toy_images, toy_model

from deepfake.config import make_config
from deepfake.data import ImageSet
from deepfake.evaluate import corrupted_sets, evaluation_settings, measure
from deepfake.plots import (OVERVIEW_NAME, eps_label, headline_epsilons, plot_adversarial_grid, plot_attack_comparison,
                            plot_corruptions, plot_evaluation, plot_gradcam, plot_models_overview, plot_training_curves)
from deepfake.report import write_report


@pytest.fixture(scope="module")
def results():
    """A results dict whose evaluation was measured for real, on a linear toy model (fast)."""
    config = make_config("tiny", eval_epsilons=(0.0, 0.03, 8 / 255), corruption_severities=(1, 3))
    images, labels = toy_images(12)
    val = ImageSet(images, labels, [f"{i}.png" for i in range(12)])
    corrupted = corrupted_sets(images, config.corruption_severities, config.seed)
    evaluation = {"settings": evaluation_settings(config), "n_val": 12, "device": "cpu", "evaluated": "today",
                  "seconds": {"attacks": 1.0}, "gradcam": {"layer": "toy.0", "phase": "final"}}
    for phase in ("base", "final"):
        evaluation[phase], probs = measure(toy_model(), val, corrupted, config, "cpu")
    history = [{"epoch": e, "train_loss": 1 / e, "train_acc": 0.5, "val_acc": 0.6, "val_f1": 0.6,
                "val_auc": None if e == 1 else 0.7} for e in (1, 2)]
    return {"config": config.to_dict(), "seed": 42, "device": "cpu", "versions": {"torch": "x"},
            "data": {"counts": {"train": {"real": 5, "fake": 5}, "val": {"real": 6, "fake": 6}}},
            "timings": {"load_data": 0.5},
            "models": {"toy": {"checkpoints": {"base": "toy_base.pt", "final": "toy_final.pt"},
                               "history": {"base": history, "finetune": history[:1]}, "evaluation": evaluation}},
            "_probs": probs, "_val": val}


def test_every_per_model_figure_is_written(results, tmp_path):
    evaluation = results["models"]["toy"]["evaluation"]
    val, probs = results["_val"], results["_probs"]
    rng = np.random.default_rng(0)
    written = [
        plot_evaluation(val.labels, probs, evaluation["final"]["clean"], "toy", tmp_path / "evaluation.png"),
        plot_attack_comparison(evaluation, "toy", tmp_path / "comparison.png"),
        plot_corruptions(evaluation, "toy", tmp_path / "corruptions.png"),
        plot_training_curves(results["models"]["toy"]["history"], "toy", tmp_path / "curves.png"),
        plot_adversarial_grid(rng.random((3, 2, 16, 16, 3)), rng.random((3, 2)), np.array([0, 1]), [0, 0.03, 0.05],
                              "grid", tmp_path / "grid.png"),
        plot_gradcam(rng.random((2, 16, 16, 3)), rng.random((2, 16, 16)).astype(np.float32), np.array([0, 1]),
                     np.array([0.2, 0.3]), "cam", tmp_path / "cam.png"),
    ]
    for path in written:
        assert path.read_bytes().startswith(b"\x89PNG"), path
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)  # no temp files left


def test_overview_and_report_without_and_with_an_ensemble(results, tmp_path):
    results = {k: v for k, v in results.items() if not k.startswith("_")}
    assert plot_models_overview(results, tmp_path).stat().st_size > 0
    report = write_report(results, tmp_path).read_text()
    assert "## Ensemble" not in report and f"]({OVERVIEW_NAME})" in report
    assert "| toy |" in report and "| 8/255 |" in report and "| gaussian_noise | 3 |" in report

    single = results["models"]["toy"]["evaluation"]["final"]["clean"]
    results["ensemble"] = {"scheme": "auc", "members": {"toy": {"weight": 1.0}}, "val": dict(single, accuracy=0.99),
                           "single": {"toy": single}}
    assert plot_models_overview(results, tmp_path).stat().st_size > 0
    report = write_report(results, tmp_path).read_text()
    assert "## Ensemble vs single models" in report and "| **ensemble** | 0.9900 |" in report
    assert "calls an image fake from" not in report  # a run from before thresholds were chosen

    results["ensemble"].update(threshold=0.625, threshold_from="validation",
                               threshold_check={"val_accuracy_at_0.5": 0.9, "val_accuracy_crossfit": 0.95})
    report = write_report(results, tmp_path).read_text()
    assert "fake from probability 0.6250 (validation" in report
    assert ("at 0.5: 0.9000; at the cut chosen on all these images 0.9900, which flatters it: the table shows each "
            "image called at a cut chosen on the other folds") in report
    assert "| **ensemble** (accuracy: cut chosen on other folds) | 0.9500 |" in report  # the honest figure, labelled
    assert "beats the ensemble" not in report

    results["ensemble"]["better_single"] = {"name": "toy", "checkpoint": "ck/toy_final.pt", "val_accuracy": 0.97,
                                            "ensemble_val_accuracy": 0.95}
    report = write_report(results, tmp_path).read_text()
    assert "On validation toy alone (0.9700) beats the ensemble (0.9500): `python ensemble.py --checkpoints " \
           "ck/toy_final.pt` submits it." in report


def test_report_before_any_evaluation(tmp_path):
    report = write_report({}, tmp_path).read_text()
    assert "No model has been evaluated yet" in report


def test_epsilon_labels_and_headline_budgets():
    assert eps_label(8 / 255) == "8/255" and eps_label(0.03) == "0.03" and eps_label(0.0) == "0"
    assert headline_epsilons([0.0, 0.02, 0.03, 8 / 255]) == [8 / 255, 0.03]
    assert headline_epsilons([0.0, 0.05]) == [0.05]
