"""The submission: weights, numeric order, exact schema, provenance, and one clear line per bad input."""
from __future__ import annotations

import hashlib
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from deepfake.checkpoints import load_checkpoint, read_checkpoint
from deepfake.config import MODEL_NAMES
from deepfake.data import file_number, list_image_files, load_images
from deepfake.cut import choose_threshold, crossfit_accuracy, weighted_fake_proba
from deepfake.ensemble import better_single, ensemble_weights
from deepfake.members import EnsembleError, explicit_members
from deepfake.submission import submission_rows
from deepfake.inference import predict_fake_proba
from deepfake.io import read_json, write_json
from deepfake.plots import OVERVIEW_NAME
from deepfake.report import REPORT_NAME
from deepfake.results import load_results, results_path
from ensemble import main

SENTINEL = '[{"index": 1, "prediction": "real"}]\n'


@pytest.fixture
def resnet_checkpoint(tiny_run) -> Path:
    return Path(tiny_run.checkpoint_dir) / "resnet_se_final.pt"


@pytest.fixture
def demo_images(demo_dir) -> list[Path]:
    return list_image_files(demo_dir / "test")


def make_test_dir(folder: Path, sources: list[Path], names: list[str]) -> Path:
    folder.mkdir(parents=True)
    for source, name in zip(sources, names):
        shutil.copy(source, folder / name)
    return folder


def run_cli(run_dir: Path, output: Path, *args: str) -> int:
    return main(["--checkpoint-dir", str(run_dir), "--output", str(output), "--device", "cpu", *args])


# ---------------------------------------------------------------------------------------------
# Library functions
# ---------------------------------------------------------------------------------------------

def test_weights_sum_to_one_and_follow_validation_accuracy():
    val = {"a": {"accuracy": 0.9, "auc": 0.95}, "b": {"accuracy": 0.6, "auc": 0.7},
           "c": {"accuracy": 0.75, "auc": None}}
    weights = ensemble_weights(val, "accuracy")
    assert list(weights) == ["a", "b", "c"] and sum(weights.values()) == pytest.approx(1.0)
    assert weights["a"] > weights["c"] > weights["b"]
    assert weights["a"] / weights["b"] == pytest.approx(0.9 / 0.6)
    assert ensemble_weights(val, "equal") == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    assert ensemble_weights({k: val[k] for k in "ab"}, "auc") == pytest.approx({"a": 0.95 / 1.65, "b": 0.7 / 1.65})
    with pytest.raises(EnsembleError, match="no validation auc recorded for c; use --weights equal"):
        ensemble_weights(val, "auc")
    with pytest.raises(EnsembleError, match="unknown weight scheme"):
        ensemble_weights(val, "median")


def test_log_odds_weights_silence_a_member_at_chance_and_favour_the_strong_one():
    val = {"strong": {"accuracy": 0.95}, "weak": {"accuracy": 0.8}, "chance": {"accuracy": 0.45}}
    weights = ensemble_weights(val, "logodds")
    assert weights["chance"] == 0 and sum(weights.values()) == pytest.approx(1.0)
    assert weights["strong"] / weights["weak"] == pytest.approx(math.log(19) / math.log(4))
    assert weights["strong"] / weights["weak"] > 0.95 / 0.8  # far more say than accuracy weights give it
    assert ensemble_weights({"perfect": {"accuracy": 1.0}, "other": {"accuracy": 0.9}}, "logodds")["perfect"] < 1


def test_weighted_average_of_identical_models_is_that_model():
    probs = np.random.default_rng(0).random(50)
    weights = ensemble_weights({"a": {"accuracy": 0.9}, "b": {"accuracy": 0.7}, "c": {"accuracy": 0.8}}, "accuracy")
    np.testing.assert_allclose(weighted_fake_proba({n: probs for n in "abc"}, weights), probs, rtol=1e-12)
    mixed = weighted_fake_proba({"a": np.zeros(2), "b": np.ones(2)}, {"a": 0.25, "b": 0.75})
    np.testing.assert_allclose(mixed, [0.75, 0.75])


def test_threshold_moves_only_where_validation_accuracy_gains():
    labels = np.array([0, 0, 0, 1, 1, 1])
    leaning_fake = np.array([0.55, 0.6, 0.62, 0.8, 0.9, 0.95])  # every real image above 0.5
    assert choose_threshold(labels, leaning_fake) == pytest.approx((0.62 + 0.8) / 2)
    assert choose_threshold(labels, np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])) == 0.5  # 0.5 already perfect
    assert choose_threshold(labels, np.array([0.3, 0.45, 0.7, 0.6, 0.8, 0.9])) == 0.5  # ties go to 0.5
    assert choose_threshold(labels[:3], leaning_fake[:3]) == 0.5  # one class: no cut to place


def test_crossfit_accuracy_rewards_a_real_shift_and_not_noise():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100)
    shifted = np.concatenate([rng.uniform(0.5, 0.7, 100), rng.uniform(0.75, 0.95, 100)])
    assert (shifted >= 0.5).mean() == 1.0  # at 0.5 every image is called fake: half right
    assert crossfit_accuracy(labels, shifted) == 1.0
    noise = rng.random(200)
    in_sample = ((noise >= choose_threshold(labels, noise)) == labels).mean()
    assert crossfit_accuracy(labels, noise) < in_sample  # a cut fitted to noise does not carry over
    assert crossfit_accuracy(labels[96:], noise[96:]) is None  # 4 real images: fewer than the folds


def test_better_single_is_the_strongest_member_only_when_it_beats_the_ensemble():
    single = {"a": {"accuracy": 0.80}, "b": {"accuracy": 0.91}, "c": {"accuracy": 0.88}}
    assert better_single(single, 0.878) == "b"
    assert better_single(single, 0.91) is None  # a tie is no reason to drop the average
    assert better_single(single, 0.95) is None
    assert better_single({"b": {"accuracy": 0.91}}, 0.5) is None  # one member: it is the ensemble


def test_submission_rows_are_the_exact_schema_sorted_by_index():
    rows = submission_rows([10, 2, 1, 7], np.array([0.9, 0.1, 0.5, 0.49]))
    assert rows == [
        {"index": 1, "prediction": "fake"}, {"index": 2, "prediction": "real"},
        {"index": 7, "prediction": "real"}, {"index": 10, "prediction": "fake"},
    ]
    assert all(type(row["index"]) is int for row in rows)


# ---------------------------------------------------------------------------------------------
# End to end on the tiny training run
# ---------------------------------------------------------------------------------------------

def test_ensemble_of_the_training_run_writes_submission_meta_probabilities_and_report(run_dir, tmp_path, caplog):
    output, table_file = tmp_path / "out" / "submission.json", tmp_path / "probabilities.csv"
    with caplog.at_level(logging.INFO, logger="deepfake"):
        assert run_cli(run_dir, output, "--probabilities", str(table_file), "--weights", "accuracy") == 0

    results = load_results(results_path(run_dir))
    rows = read_json(output)
    test_files = list_image_files(results["data"]["test_dir"])
    assert [row["index"] for row in rows] == sorted(file_number(f) for f in test_files)
    assert all(set(row) == {"index", "prediction"} and row["prediction"] in {"real", "fake"} for row in rows)

    meta = read_json(tmp_path / "out" / "submission.meta.json")
    assert meta["scheme"] == "accuracy" and meta["n_images"] == len(test_files)
    assert meta["test_dir"] == results["data"]["test_dir"]
    members = {m["name"]: m for m in meta["members"]}
    assert set(members) == set(MODEL_NAMES)
    assert sum(m["weight"] for m in members.values()) == pytest.approx(1.0)
    val_accuracy = {name: results["models"][name]["val"]["final"]["accuracy"] for name in MODEL_NAMES}
    for name, member in members.items():
        assert member["checkpoint"] == results["models"][name]["checkpoints"]["final"]
        assert member["sha256"] == hashlib.sha256(Path(member["checkpoint"]).read_bytes()).hexdigest()
        assert member["weight"] == pytest.approx(val_accuracy[name] / sum(val_accuracy.values()))
        assert f"{name}: weight {member['weight']:.4f}" in caplog.text and member["checkpoint"] in caplog.text

    table = pd.read_csv(table_file)
    assert list(table["index"]) == [row["index"] for row in rows]
    assert list(table["prediction"]) == [row["prediction"] for row in rows]
    assert meta["threshold_from"] == "validation" and 0 < meta["threshold"] < 1
    assert list(table["prediction"]) == ["fake" if p >= meta["threshold"] else "real" for p in table["proba_ensemble"]]
    assert f"ensemble threshold {meta['threshold']:.4f} (validation)" in caplog.text
    weighted = sum(members[name]["weight"] * table[f"proba_{name}"] for name in MODEL_NAMES)
    np.testing.assert_allclose(table["proba_ensemble"], weighted, rtol=1e-6)

    ensemble = results["ensemble"]
    assert ensemble["scheme"] == "accuracy" and set(ensemble["single"]) == set(MODEL_NAMES)
    assert ensemble["members"] == {name: {"checkpoint": m["checkpoint"], "weight": m["weight"]}
                                   for name, m in members.items()}
    assert set(ensemble["val"]) == {"accuracy", "precision", "recall", "f1", "auc"}
    assert ensemble["val"] == meta["val"]["ensemble"]
    assert ensemble["threshold"] == meta["threshold"] and ensemble["threshold_check"] == meta["threshold_check"]
    assert ensemble["val"]["accuracy"] >= ensemble["threshold_check"]["val_accuracy_at_0.5"]
    assert "Ensemble vs single models" in (tmp_path / "visualizations" / REPORT_NAME).read_text()
    assert (tmp_path / "visualizations" / OVERVIEW_NAME).exists()


def test_a_model_that_beats_the_ensemble_on_validation_is_named_with_the_command(run_dir, tmp_path, caplog,
                                                                                 monkeypatch):
    asked = {}

    def resnet_wins(single, ensemble_accuracy):
        asked.update(single=single, ensemble_accuracy=ensemble_accuracy)
        return "resnet_se"

    monkeypatch.setattr("deepfake.submission.better_single", resnet_wins)
    with caplog.at_level(logging.INFO, logger="deepfake"):
        assert run_cli(run_dir, tmp_path / "submission.json", "--weights", "accuracy") == 0

    meta = read_json(tmp_path / "submission.meta.json")
    crossfit = meta["threshold_check"]["val_accuracy_crossfit"]
    assert asked == {"single": meta["val"]["single"],
                     "ensemble_accuracy": meta["val"]["ensemble"]["accuracy"] if crossfit is None else crossfit}
    checkpoint = next(m["checkpoint"] for m in meta["members"] if m["name"] == "resnet_se")
    assert meta["better_single"] == {"name": "resnet_se", "checkpoint": checkpoint,
                                     "val_accuracy": meta["val"]["single"]["resnet_se"]["accuracy"],
                                     "ensemble_val_accuracy": asked["ensemble_accuracy"]}
    command = f"`python ensemble.py --checkpoints {checkpoint}` submits it"
    assert command in caplog.text and command in (tmp_path / "visualizations" / REPORT_NAME).read_text()
    assert load_results(results_path(run_dir))["ensemble"]["better_single"] == meta["better_single"]


def test_a_copied_run_reports_into_its_own_folder_and_leaves_the_original_alone(run_dir, tiny_run, tmp_path,
                                                                                 monkeypatch):
    original_report = Path(tiny_run.viz_dir) / REPORT_NAME
    before = original_report.read_bytes()
    monkeypatch.chdir(tmp_path)  # the run was recorded from another working directory, and is named relatively
    assert run_cli(Path(run_dir.name), tmp_path / "submission.json") == 0

    assert "Ensemble vs single models" in (tmp_path / "visualizations" / REPORT_NAME).read_text()
    assert original_report.read_bytes() == before
    assert "ensemble" not in load_results(results_path(tiny_run.checkpoint_dir))


def test_submission_follows_the_number_in_each_file_name(run_dir, resnet_checkpoint, demo_images, tmp_path):
    names = [f"{n}.png" if n % 2 else f"img_{n:04d}.png" for n in range(1, 13)]
    test_dir = make_test_dir(tmp_path / "test", demo_images[:12], names)
    output, table_file = tmp_path / "submission.json", tmp_path / "probabilities.csv"
    assert run_cli(run_dir, output, "--test-dir", str(test_dir), "--checkpoints", str(resnet_checkpoint),
                   "--probabilities", str(table_file)) == 0

    assert [row["index"] for row in read_json(output)] == list(range(1, 13))
    table = pd.read_csv(table_file)
    assert [file_number(f) for f in table["file"]] == list(table["index"]) == list(range(1, 13))
    images, _ = load_images([Path(f) for f in table["file"]])
    expected = predict_fake_proba(load_checkpoint(resnet_checkpoint), images)
    np.testing.assert_allclose(table["proba_ensemble"], expected, rtol=1e-5)
    assert read_json(tmp_path / "submission.meta.json")["members"][0]["weight"] == 1.0


def test_ensemble_of_identical_models_equals_the_model(run_dir, resnet_checkpoint, demo_images, tmp_path):
    copies = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for copy in copies:
        shutil.copy(resnet_checkpoint, copy)
    table_file = tmp_path / "probabilities.csv"
    assert run_cli(run_dir, tmp_path / "submission.json", "--test-dir", str(demo_images[0].parent),
                   "--checkpoints", ",".join(map(str, copies)), "--probabilities", str(table_file),
                   "--threshold", "0.5", "--weights", "accuracy") == 0

    table = pd.read_csv(table_file)
    images, _ = load_images(list(table["file"]))
    single = predict_fake_proba(load_checkpoint(resnet_checkpoint), images)
    for column in ("proba_a", "proba_b", "proba_ensemble"):
        np.testing.assert_allclose(table[column], single, rtol=1e-5)
    meta = read_json(tmp_path / "submission.meta.json")
    assert [m["weight"] for m in meta["members"]] == [0.5, 0.5]
    assert (meta["threshold"], meta["threshold_from"]) == (0.5, "--threshold")
    assert meta["threshold_check"]["val_accuracy_crossfit"] is None
    val = load_results(results_path(run_dir))["ensemble"]
    assert val["val"] == val["single"]["a"] == val["single"]["b"]


def test_moved_run_finds_its_checkpoints_and_leaves_unfinished_models_out(run_dir, tiny_run, tmp_path, caplog):
    shutil.copy(Path(tiny_run.checkpoint_dir) / "efficientnet_b0_final.pt", run_dir)
    results = load_results(results_path(run_dir))
    models = results["models"]
    models["efficientnet_b0"]["checkpoints"]["final"] = "elsewhere/efficientnet_b0_final.pt"
    del models["resnet_se"]["checkpoints"]["final"]
    results["models"] = {name: models[name] for name in ("efficientnet_b0", "resnet_se")}
    write_json(results_path(run_dir), results)
    with caplog.at_level(logging.INFO, logger="deepfake"):
        assert run_cli(run_dir, tmp_path / "submission.json") == 0

    assert "resnet_se has no final checkpoint" in caplog.text
    members = read_json(tmp_path / "submission.meta.json")["members"]
    assert [(m["name"], m["checkpoint"], m["weight"]) for m in members] == [
        ("efficientnet_b0", str(run_dir / "efficientnet_b0_final.pt"), 1.0)]


def test_a_model_trained_on_another_split_is_left_out_or_refused(run_dir, tiny_run, tmp_path, caplog, capsys):
    foreign = read_checkpoint(Path(tiny_run.checkpoint_dir) / "efficientnet_b0_final.pt")
    foreign["metrics"]["data_id"] = "another-split"
    torch.save(foreign, run_dir / "efficientnet_b0_final.pt")  # found before the recorded path (a copied run)
    with caplog.at_level(logging.INFO, logger="deepfake"):
        assert run_cli(run_dir, tmp_path / "submission.json", "--weights", "accuracy") == 0
    members = read_json(tmp_path / "submission.meta.json")["members"]
    assert {m["name"] for m in members} == {"convnext_tiny", "resnet_se"}
    assert f"efficientnet_b0 ({run_dir / 'efficientnet_b0_final.pt'}) was not trained on the split" in caplog.text

    assert run_cli(run_dir, tmp_path / "by_hand.json", "--checkpoints", str(run_dir / "efficientnet_b0_final.pt")) == 2
    assert "was not trained on the split in" in capsys.readouterr().err
    assert not (tmp_path / "by_hand.json").exists()


def test_labelled_test_folder_is_scored(run_dir, resnet_checkpoint, demo_dir, tmp_path):
    train = demo_dir / "train"
    sources = {cls: list_image_files(train / cls)[:3] for cls in ("real", "fake")}
    test_dir = tmp_path / "test"
    make_test_dir(test_dir / "REAL", sources["real"], ["1.png", "3.png", "5.png"])
    make_test_dir(test_dir / "FAKE", sources["fake"], ["2.png", "4.png", "6.png"])
    output = tmp_path / "submission.json"
    assert run_cli(run_dir, output, "--test-dir", str(test_dir), "--checkpoints", str(resnet_checkpoint),
                   "--threshold", "0.5") == 0

    assert [row["index"] for row in read_json(output)] == list(range(1, 7))
    test_scores = load_results(results_path(run_dir))["ensemble"]["test"]
    assert set(test_scores["single"]) == {"resnet_se_final"}
    assert test_scores["ensemble"] == test_scores["single"]["resnet_se_final"]
    assert test_scores["ensemble"]["auc"] is not None


def test_duplicate_numbers_fall_back_to_natural_order_with_a_warning(run_dir, resnet_checkpoint, demo_images,
                                                                      tmp_path, caplog):
    names = ["1.png", "img_001.png", "2.png", "x.png"]
    test_dir = make_test_dir(tmp_path / "test", demo_images[:4], names)
    output, table_file = tmp_path / "submission.json", tmp_path / "probabilities.csv"
    assert run_cli(run_dir, output, "--test-dir", str(test_dir), "--checkpoints", str(resnet_checkpoint),
                   "--probabilities", str(table_file)) == 0

    assert "natural name order" in caplog.text
    natural_order = ["1.png", "2.png", "img_001.png", "x.png"]
    assert [row["index"] for row in read_json(output)] == [1, 2, 3, 4]
    table = pd.read_csv(table_file)
    assert list(table["index"]) == [1, 2, 3, 4] and [Path(f).name for f in table["file"]] == natural_order
    renumbered = read_json(tmp_path / "submission.meta.json")["renumbered_files"]
    assert {index: Path(f).name for index, f in renumbered.items()} == dict(zip("1234", natural_order))


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the problem, exit 2, the previous submission left as it was
# ---------------------------------------------------------------------------------------------

def assert_fails(capsys, run_dir: Path, output: Path, *args: str) -> str:
    output.write_text(SENTINEL)
    assert run_cli(run_dir, output, *args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert output.read_text() == SENTINEL
    assert [p.name for p in output.parent.iterdir() if output.stem in p.name] == [output.name]  # no meta, no temp file
    return errors[0]


def test_no_training_run_says_to_train_first(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    error = assert_fails(capsys, tmp_path / "checkpoints", tmp_path / "submission.json")
    assert "python deepfake_detection.py" in error


def test_run_without_final_checkpoints_says_to_train_first(run_dir, tmp_path, capsys):
    results = load_results(results_path(run_dir))
    for entry in results["models"].values():
        entry["checkpoints"].pop("final")
    write_json(results_path(run_dir), results)
    error = assert_fails(capsys, run_dir, tmp_path / "submission.json")
    assert "no final checkpoints" in error and "python deepfake_detection.py" in error


def test_checkpoint_listed_twice_is_refused(tmp_path):
    with pytest.raises(EnsembleError, match="listed twice"):
        explicit_members([tmp_path / "a.pt", tmp_path / "a.pt"])


@pytest.mark.parametrize("explicit", [True, False], ids=["--checkpoints", "recorded"])
def test_unloadable_checkpoint_is_named(run_dir, resnet_checkpoint, tmp_path, capsys, explicit):
    broken = tmp_path / "broken_final.pt"
    broken.write_bytes(resnet_checkpoint.read_bytes()[:1000])
    args = ["--checkpoints", str(broken)] if explicit else []
    if not explicit:
        results = load_results(results_path(run_dir))
        first = next(iter(results["models"]))  # fails before the other models are loaded
        results["models"][first]["checkpoints"]["final"] = str(broken)
        write_json(results_path(run_dir), results)
    assert str(broken) in assert_fails(capsys, run_dir, tmp_path / "submission.json", *args)


def test_missing_or_empty_test_folder_is_named(run_dir, tmp_path, capsys):
    missing, empty = tmp_path / "missing", tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    for folder in (missing, empty):
        assert str(folder) in assert_fails(capsys, run_dir, tmp_path / "submission.json", "--test-dir", str(folder))


@pytest.mark.parametrize("threshold", ["0", "1.5"])
def test_threshold_outside_zero_one_is_refused(run_dir, tmp_path, capsys, threshold):
    assert "--threshold" in assert_fails(capsys, run_dir, tmp_path / "submission.json", "--threshold", threshold)


def test_corrupt_test_image_is_named(run_dir, demo_images, tmp_path, capsys):
    test_dir = make_test_dir(tmp_path / "test", demo_images[:2], ["1.png", "2.png"])
    (test_dir / "3.png").write_bytes(b"not a png")
    assert "3.png" in assert_fails(capsys, run_dir, tmp_path / "submission.json", "--test-dir", str(test_dir))


def test_a_run_folder_copied_alone_submits_and_predicts_without_its_data(run_dir, tiny_run, demo_images, tmp_path):
    """A Kaggle inference notebook: the checkpoint folder attached alone, the split's images nowhere."""
    from predict import main as predict_main

    alone = tmp_path / "dataset" / "checkpoints"
    alone.mkdir(parents=True)
    for name in ("results.json", *(p.name for p in Path(tiny_run.checkpoint_dir).glob("*_final.pt"))):
        shutil.copy(Path(tiny_run.checkpoint_dir) / name, alone / name)
    split = read_json(Path(tiny_run.checkpoint_dir) / "split.json")
    for part in ("train", "val"):
        split[part]["paths"] = [f"/gone/{Path(p).name}" for p in split[part]["paths"]]
    write_json(alone / "split.json", split)
    test_dir = make_test_dir(tmp_path / "test", demo_images[:8], [f"{n}.png" for n in range(1, 9)])

    assert run_cli(run_dir, tmp_path / "reference.json", "--test-dir", str(test_dir)) == 0
    assert run_cli(alone, tmp_path / "alone.json", "--test-dir", str(test_dir)) == 0
    assert read_json(tmp_path / "alone.json") == read_json(tmp_path / "reference.json")
    meta, reference = read_json(tmp_path / "alone.meta.json"), read_json(tmp_path / "reference.meta.json")
    assert (meta["threshold"], meta["operating_point"], meta["val"]) == (
        reference["threshold"], reference["operating_point"], reference["val"])

    assert predict_main([str(test_dir), "--checkpoint-dir", str(alone), "--output", str(tmp_path / "calls.csv"),
                         "--device", "cpu"]) == 0
    calls = pd.read_csv(tmp_path / "calls.csv")
    assert [row["prediction"] for row in read_json(tmp_path / "alone.json")] == [
        calls.set_index("path").loc[str(test_dir / f"{n}.png"), "prediction"] for n in range(1, 9)]
