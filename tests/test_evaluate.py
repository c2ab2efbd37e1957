"""Evaluation: the attack sweep's values, the evaluation recorded in results.json, its figures and report."""
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import deepfake_detection
from deepfake.checkpoints import save_checkpoint
from deepfake.config import make_config
from deepfake.corruptions import CORRUPTIONS
from deepfake.data import ImageSet, save_split
from deepfake.evaluate import (adversarial_examples, attack_sweep, clean_metrics, corrupted_sets, evaluate_run,
                               evaluation_sample, measure, showcase_indices)
from deepfake.inference import predict_fake_proba
from deepfake.io import write_json
from deepfake.models import build_model
from deepfake.plots import OVERVIEW_NAME, figure_names
from deepfake.report import REPORT_NAME
from deepfake.results import load_results, results_path, update_results

MODEL = "resnet_se"


def toy_model(size: int = 16) -> nn.Module:
    """A linear classifier: its input gradient's sign never changes, so PGD can only match or beat FGSM."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, 2))


def toy_images(count: int, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8), np.arange(count) % 2


def test_attack_sweep_starts_at_clean_accuracy_and_pgd_is_at_least_as_strong():
    model, (images, labels) = toy_model(), toy_images(40)
    epsilons = [0.0, 0.01, 0.03, 0.1]
    sweep = attack_sweep(model, images, labels, epsilons, pgd_steps=10, batch_size=16, seed=0, device="cpu")

    clean_accuracy = clean_metrics(labels, predict_fake_proba(model, images))["accuracy"]
    assert sweep["epsilons"] == epsilons
    assert sweep["fgsm"][0] == sweep["pgd"][0] == clean_accuracy
    assert all(0.0 <= a <= 1.0 for a in sweep["fgsm"] + sweep["pgd"])
    assert all(later <= earlier for earlier, later in zip(sweep["fgsm"], sweep["fgsm"][1:]))
    assert all(p <= f + 1 / len(labels) for f, p in zip(sweep["fgsm"], sweep["pgd"]))
    assert sweep["pgd"][-1] < clean_accuracy
    again = attack_sweep(model, images, labels, epsilons, pgd_steps=10, batch_size=16, seed=0, device="cpu")
    assert again["pgd"] == sweep["pgd"]


def test_adversarial_examples_stay_within_eps_and_the_pixel_range():
    model, (images, labels) = toy_model(), toy_images(6)
    epsilons = [0.0, 0.03, 8 / 255]
    adversarial, probs = adversarial_examples(model, images, labels, epsilons, "cpu")
    clean = images.astype(np.float32) / 255
    assert adversarial.shape == (3, *images.shape) and probs.shape == (3, 6)
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0
    for eps, batch in zip(epsilons, adversarial):
        assert np.abs(batch - clean).max() <= eps + 1e-6


def test_clean_metrics_add_confusion_matrix_and_report():
    labels = np.array([0, 0, 1, 1, 1])
    metrics = clean_metrics(labels, np.array([0.1, 0.7, 0.9, 0.6, 0.2]))
    assert metrics["confusion_matrix"] == [[1, 1], [1, 2]]
    assert metrics["accuracy"] == pytest.approx(0.6)
    assert metrics["classification_report"]["fake"]["support"] == 3


def test_showcase_alternates_classes():
    labels = np.array([0] * 10 + [1] * 3)
    chosen = showcase_indices(labels, 6, seed=0)
    assert labels[chosen].tolist() == [0, 1, 0, 1, 0, 1] and len(set(chosen)) == 6
    assert len(showcase_indices(labels, 20, seed=0)) == 13


def test_the_evaluation_sample_is_seeded_stratified_and_capped():
    labels = np.array([0] * 900 + [1] * 300)
    sample = evaluation_sample(labels, 200, seed=0)
    assert len(sample) == 200 == len(set(sample)) and np.all(np.diff(sample) > 0)
    assert np.bincount(labels[sample]).tolist() == [150, 50], "each class keeps its share"
    assert np.array_equal(sample, evaluation_sample(labels, 200, seed=0))
    assert not np.array_equal(sample, evaluation_sample(labels, 200, seed=1))
    assert np.array_equal(evaluation_sample(labels, 1200, seed=0), np.arange(1200)), "a small split is all of it"
    assert np.array_equal(evaluation_sample(labels, 0, seed=0), np.arange(1200)), "0 is no cap"


def test_attacks_and_corruptions_measure_the_sample_and_clean_metrics_the_whole_split():
    config = make_config("tiny", corruption_severities=(1,))
    images, labels = toy_images(16)
    val = ImageSet(images, labels, [f"{i}.png" for i in range(16)])
    sample = evaluation_sample(labels, 6, config.seed)
    corrupted = corrupted_sets(images[sample], config.corruption_severities, config.seed)
    measured, probs = measure(toy_model(), val, corrupted, config, "cpu", sample=sample)
    assert np.sum(measured["clean"]["confusion_matrix"]) == 16
    sample_accuracy = float(np.mean((probs[sample] >= 0.5) == labels[sample]))
    assert measured["attacks"]["fgsm"][0] == pytest.approx(sample_accuracy)
    for entry in measured["corruptions"].values():
        assert entry["drop"] == pytest.approx([sample_accuracy - a for a in entry["accuracy"]])


def test_evaluate_only_without_checkpoints_names_the_command(tmp_path, capsys):
    code = deepfake_detection.main(["--evaluate-only", "--checkpoint-dir", str(tmp_path / "none"),
                                    "--viz-dir", str(tmp_path / "viz"), "--device", "cpu"])
    error = capsys.readouterr().err
    assert code == 2
    assert str(tmp_path / "none") in error and "run `python deepfake_detection.py` first" in error
    assert len(error.strip().splitlines()) == 1


def copy_run(run, destination: Path) -> Path:
    """The run's split and results copied, its checkpoints linked (only read)."""
    source, copy = Path(run.checkpoint_dir), destination / "checkpoints"
    copy.mkdir(parents=True)
    for name in ("split.json", "results.json"):
        shutil.copy(source / name, copy / name)
    for path in source.glob("*.pt"):
        (copy / path.name).symlink_to(path)
    return copy


def test_evaluate_only_reevaluates_a_copied_run_as_it_was_configured(tiny_run, tmp_path):
    copy = copy_run(tiny_run, tmp_path / "copy")
    checkpoints = {path: path.stat().st_mtime_ns for path in Path(tiny_run.checkpoint_dir).glob("*.pt")}
    original_report = (Path(tiny_run.viz_dir) / REPORT_NAME).read_bytes()

    assert deepfake_detection.main(["--evaluate-only", "--checkpoint-dir", str(copy), "--device", "cpu"]) == 0
    results = load_results(results_path(copy))
    for name in tiny_run.models:  # the run's own (tiny) settings, not the command line's default preset
        assert results["models"][name]["evaluation"]["settings"]["epsilons"] == sorted(tiny_run.eval_epsilons)
    assert f"## {tiny_run.models[0]}" in (tmp_path / "copy" / "visualizations" / REPORT_NAME).read_text()
    assert (Path(tiny_run.viz_dir) / REPORT_NAME).read_bytes() == original_report
    assert {path: path.stat().st_mtime_ns for path in checkpoints} == checkpoints


def test_evaluate_only_with_models_reevaluates_those_and_keeps_the_others(tiny_run, tmp_path, capsys):
    copy = copy_run(tiny_run, tmp_path / "copy")
    results = load_results(results_path(copy))
    for entry in results["models"].values():
        del entry["evaluation"]
    write_json(results_path(copy), results)
    common = ["--evaluate-only", "--checkpoint-dir", str(copy), "--device", "cpu"]

    assert deepfake_detection.main([*common, "--models", "resnet_se"]) == 0
    evaluated = {name for name, entry in load_results(results_path(copy))["models"].items() if "evaluation" in entry}
    assert evaluated == {"resnet_se"}

    del results["models"]["resnet_se"]
    write_json(results_path(copy), results)
    capsys.readouterr()
    assert deepfake_detection.main([*common, "--models", "resnet_se"]) == 2
    error = capsys.readouterr().err.strip()
    assert "has checkpoints for convnext_tiny, efficientnet_b0 only: pass --models" in error
    assert len(error.splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# One real evaluation: an untrained model pair on eight validation images, tiny preset (no training)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluated")
    config = make_config("tiny", checkpoint_dir=str(root / "checkpoints"), viz_dir=str(root / "viz"), device="cpu",
                         models=(MODEL,))
    images, labels = toy_images(10, size=32)
    paths = []
    for i, image in enumerate(images):
        paths.append(str(root / "images" / f"{i}.png"))
        Path(paths[-1]).parent.mkdir(exist_ok=True)
        cv2.imwrite(paths[-1], cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    everything = ImageSet(images, labels, paths)
    checkpoint_dir = Path(config.checkpoint_dir)
    save_split(checkpoint_dir / "split.json", everything.subset(np.arange(2)), everything.subset(np.arange(2, 10)))
    checkpoints = {}
    for phase in ("base", "final"):
        checkpoints[phase] = str(checkpoint_dir / f"{MODEL}_{phase}.pt")
        save_checkpoint(checkpoints[phase], build_model(MODEL), config=config.to_dict(), phase=phase)
    history = [{"epoch": 1, "train_loss": 0.7, "train_acc": 0.5, "val_acc": 0.5, "val_f1": 0.4, "val_auc": 0.5,
                "lr": 1e-3, "seconds": 1.0}]
    update_results(results_path(checkpoint_dir), lambda r: r.update(
        config=config.to_dict(), seed=config.seed, device="cpu",
        models={MODEL: {"checkpoints": checkpoints, "history": {"base": history, "finetune": history}}},
    ))
    return config, evaluate_run(config, torch.device("cpu"))


def test_evaluation_is_recorded_for_both_checkpoints(evaluated):
    config, results = evaluated
    assert load_results(results_path(config.checkpoint_dir)) == results
    evaluation = results["models"][MODEL]["evaluation"]
    assert evaluation["n_val"] == evaluation["n_sample"] == 8
    assert evaluation["settings"]["pgd_steps"] == config.pgd_steps
    for phase in ("base", "final"):
        measured = evaluation[phase]
        clean = measured["clean"]
        assert set(clean) >= {"accuracy", "precision", "recall", "f1", "auc", "confusion_matrix",
                              "classification_report"}
        assert np.sum(clean["confusion_matrix"]) == 8
        assert measured["attacks"]["epsilons"] == sorted(config.eval_epsilons)
        assert measured["attacks"]["fgsm"][0] == measured["attacks"]["pgd"][0] == clean["accuracy"]
        assert set(measured["corruptions"]) == set(CORRUPTIONS)
        for entry in measured["corruptions"].values():
            assert entry["severities"] == list(config.corruption_severities)
            assert entry["drop"] == pytest.approx([clean["accuracy"] - a for a in entry["accuracy"]])
    assert evaluation["gradcam"]["layer"] and len(evaluation["gradcam"]["images"]) == config.gradcam_images


def test_every_figure_and_the_report_are_written(evaluated):
    config, _ = evaluated
    viz_dir = Path(config.viz_dir)
    for name in [*figure_names(MODEL).values(), OVERVIEW_NAME, REPORT_NAME]:
        assert (viz_dir / name).stat().st_size > 0, f"{name} missing or empty"
    report = (viz_dir / REPORT_NAME).read_text()
    headings = ("## Summary", f"## {MODEL}", "### Clean validation", "### Accuracy under attack", "### Corruptions")
    for heading in headings:
        assert heading in report
    assert "| epsilon | FGSM before | FGSM after | PGD-2 before | PGD-2 after |" in report
    assert f"]({figure_names(MODEL)['comparison']})" in report and f"]({OVERVIEW_NAME})" in report


def test_training_run_is_evaluated_for_every_model(tiny_run):
    results = load_results(results_path(tiny_run.checkpoint_dir))
    viz_dir = Path(tiny_run.viz_dir)
    report = (viz_dir / REPORT_NAME).read_text()
    for name in tiny_run.models:
        evaluation = results["models"][name]["evaluation"]
        assert {"base", "final", "gradcam", "seconds"} <= set(evaluation)
        assert all((viz_dir / figure).stat().st_size > 0 for figure in figure_names(name).values())
        assert f"## {name}" in report
