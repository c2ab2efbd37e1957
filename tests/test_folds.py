"""K-fold runs: the folds themselves, what they pool, and a fold ensemble end to end from a copied run folder."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from deepfake.config import make_config
from deepfake.data import DataError, ImageSet
from deepfake.errors import ConfigError
from deepfake.folds import FoldAverage, bootstrap_interval, duplicate_groups, fold_indices, pooled_frontier

from conftest import run_config


def _images(n_real: int, n_fake: int, seed: int = 0) -> ImageSet:
    rng = np.random.default_rng(seed)
    n = n_real + n_fake
    return ImageSet(rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8),
                    np.array([0] * n_real + [1] * n_fake, dtype=np.int64), [f"{i}.png" for i in range(n)])


def test_folds_are_stratified_seeded_and_validate_every_image_exactly_once():
    images = _images(50, 30)
    folds = fold_indices(images, 5, seed=7)
    assert len(folds) == 5
    validated = np.concatenate([val for _, val in folds])
    assert sorted(validated) == list(range(80))  # each image out of fold exactly once
    for train, val in folds:
        assert not set(train) & set(val) and len(train) + len(val) == 80
        assert np.bincount(images.labels[val]).tolist() == [10, 6]  # 50/5 real, 30/5 fake
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(folds, fold_indices(images, 5, seed=7)))
    assert not all(np.array_equal(a, b) for (_, a), (_, b) in zip(folds, fold_indices(images, 5, seed=8)))


def test_identical_images_always_share_a_fold():
    images = _images(40, 40)
    images.images[[3, 17, 33]] = images.images[3]  # three copies of one real image
    images.images[60] = images.images[45]  # and a pair of fakes
    assert duplicate_groups(images.images)[[3, 17, 33]].tolist() == [duplicate_groups(images.images)[3]] * 3
    for seed in range(5):
        for _, val in fold_indices(images, 4, seed):
            assert len({3, 17, 33} & set(val)) in (0, 3)
            assert len({45, 60} & set(val)) in (0, 2)


def test_too_few_distinct_images_for_the_folds_stop_with_one_line():
    images = _images(3, 20)
    with pytest.raises(DataError, match="3 real.*too few for 5 folds: lower --folds"):
        fold_indices(images, 5, seed=0, source="the images in x")
    with pytest.raises(ConfigError, match="folds=1"):
        make_config("tiny", folds=1)


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_more_images():
    rng = np.random.default_rng(0)

    def interval(n):
        labels = rng.integers(0, 2, n)
        probs = np.where(rng.random(n) < 0.8, labels, 1 - labels).astype(float)  # 80% right
        low, high = bootstrap_interval(labels, probs, "accuracy")
        accuracy = float(np.mean((probs >= 0.5) == labels))
        assert low <= accuracy <= high
        return high - low

    assert interval(2000) < interval(100) / 3
    assert bootstrap_interval(np.zeros(10), np.zeros(10), "auc") is None  # one class: no AUC


def test_a_fold_average_softmax_is_the_mean_of_its_folds():
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)) for _ in range(3)]
    x = torch.rand(5, 3, 2, 2)
    expected = torch.stack([m(x).softmax(1) for m in models]).mean(0)
    torch.testing.assert_close(FoldAverage(models)(x).softmax(1), expected)


def _fold_frontier(labels, probs, pgd, n_sample):
    points = [{"weights": w, "threshold": 0.5, "clean_accuracy": 0.0, "crossfit_accuracy": None,
               "corruption_accuracy": {"blur": c}, "pgd_8/255": a}
              for w, c, a in zip(({"a": 1.0, "b": 0.0}, {"a": 0.0, "b": 1.0}, {"a": 0.5, "b": 0.5}), (0.6, 0.7, 0.8),
                                 pgd)]
    return {"attack": "PGD-2", "pgd_steps": 2, "seconds": 1.0, "n_sample": n_sample, "points": points,
            "operating_points": {"robust": {"point": 2, "pgd_2/255": 0.9, "apgd_ce_8/255": 0.1}},
            "val": {"labels": labels, "fake_proba": probs}}


def test_the_pooled_frontier_scores_clean_on_every_oof_image_and_averages_attacks_by_fold_size():
    first = _fold_frontier([0, 1, 1], {"a": [0.1, 0.9, 0.8], "b": [0.6, 0.9, 0.3]}, (0.2, 0.4, 0.3), n_sample=300)
    second = _fold_frontier([0, 0, 1], {"a": [0.2, 0.3, 0.7], "b": [0.9, 0.1, 0.8]}, (0.5, 0.1, 0.6), n_sample=100)
    members = {"a": {"sha256": "x"}, "b": {"sha256": "y"}}
    pooled = pooled_frontier([first, second], members)
    assert pooled["val"]["labels"] == [0, 1, 1, 0, 0, 1] and pooled["n_val"] == 6 and pooled["n_sample"] == 400
    alone_a = pooled["points"][0]
    assert alone_a["clean_accuracy"] == 1.0  # "a" separates all six OOF images at its cut
    assert alone_a["pgd_8/255"] == pytest.approx((3 * 0.2 + 1 * 0.5) / 4)
    assert pooled["points"][2]["corruption_accuracy"]["blur"] == pytest.approx(0.8)
    robust = pooled["operating_points"]["robust"]
    assert pooled["points"][robust["point"]]["weights"] == {"a": 0.5, "b": 0.5}  # beyond the noise of 400 images
    assert robust["pgd_2/255"] == pytest.approx(0.9) and pooled["members"] == members


def test_a_fold_run_resumes_pools_out_of_fold_and_its_copied_folder_submits_and_predicts(tmp_path, demo_dir, caplog):
    from deepfake.ensemble import load_ensemble
    from deepfake.members import EnsembleError
    from deepfake.submission import run_ensemble
    from deepfake.pipeline import run
    from deepfake.predict import run_predict

    config = run_config(tmp_path / "run", demo_dir, folds=2, models=("resnet_se",), eval_max_images=24, gradcam_images=0)
    results = run(config)
    root = tmp_path / "run" / "checkpoints"
    oof = pd.read_csv(root / "oof.csv")
    assert len(oof) == 120 and oof["fold"].value_counts().tolist() == [60, 60]
    assert oof["path"].is_unique and set(oof["label"]) == {0, 1}
    for fold in (0, 1):
        split = json.loads((root / f"fold_{fold}" / "split.json").read_text())
        assert set(split["val"]["paths"]) == set(oof.loc[oof["fold"] == fold, "path"])
        assert not set(split["train"]["paths"]) & set(split["val"]["paths"])
        assert (root / f"fold_{fold}" / "resnet_se_final.pt").is_file()
    entry = results["folds"]["models"]["resnet_se"]["oof"]
    assert entry["accuracy"] == pytest.approx(np.mean((oof["proba_resnet_se"] >= 0.5) == oof["label"]))
    assert entry["accuracy_ci"][0] <= entry["accuracy"] <= entry["accuracy_ci"][1]
    assert results["frontier"]["n_val"] == 120 and results["frontier"]["folds"] == 2
    report = (tmp_path / "run" / "visualizations" / "report.md").read_text()
    assert "Out-of-fold validation (2 folds, 120 images)" in report

    caplog.set_level(logging.INFO)
    before = {p: p.stat().st_mtime_ns for p in root.glob("fold_*/*.pt")}
    run(config)  # the same command again: every fold's phases are current
    assert {p: p.stat().st_mtime_ns for p in root.glob("fold_*/*.pt")} == before
    assert caplog.text.count("final checkpoint matches its recipe") == 2

    copied = tmp_path / "kaggle" / "run"
    shutil.copytree(root, copied)
    shutil.move(demo_dir, tmp_path / "gone")  # inference needs the run folder alone
    try:
        ensemble = load_ensemble(copied)
        assert len(ensemble.val_labels) == 120
        assert isinstance(ensemble.models["resnet_se"], FoldAverage) and len(ensemble.models["resnet_se"].models) == 2
        test_dir = tmp_path / "gone" / "test"
        meta = run_ensemble(copied, test_dir=test_dir, output=tmp_path / "submission.json")
        assert meta["validation"] == "out of fold" and meta["n_val"] == 120 and meta["n_images"] == 20
        assert len(meta["members"][0]["folds"]) == 2
        summary = run_predict([test_dir], checkpoint_dir=copied, output=tmp_path / "calls.csv")
        calls = pd.read_csv(tmp_path / "calls.csv")
        submitted = json.loads((tmp_path / "submission.json").read_text())
        assert summary.scored == 20
        by_index = {row["index"]: row["prediction"] for row in submitted}
        assert all(by_index[int(p.rsplit("/", 1)[1].split(".")[0])] == call
                   for p, call in zip(calls["path"], calls["prediction"]))
        with pytest.raises(EnsembleError, match="2-fold run.*--checkpoints does not apply"):
            load_ensemble(copied, checkpoints=[copied / "fold_0" / "resnet_se_final.pt"])
    finally:
        shutil.move(tmp_path / "gone", demo_dir)


def test_two_runs_average_and_each_model_is_scored_only_on_images_it_never_trained_on(tiny_run, tmp_path, demo_dir):
    from deepfake.ensemble import load_ensemble
    from deepfake.members import EnsembleError
    from deepfake.submission import run_ensemble
    from deepfake.pipeline import run

    other = run_config(tmp_path / "seed43", demo_dir, seed=43, models=("resnet_se",), eval_max_images=16, gradcam_images=0)
    run(other)
    dirs = [tiny_run.checkpoint_dir, other.checkpoint_dir]
    splits = [json.loads((Path(d) / "split.json").read_text()) for d in dirs]
    trained = [set(s["train"]["paths"]) for s in splits]
    validated = [dict(zip(s["val"]["paths"], s["val"]["labels"])) for s in splits]
    stored = [json.loads((Path(d) / "results.json").read_text())["frontier"]["val"]["fake_proba"]["resnet_se"]
              for d in dirs]
    ensemble = load_ensemble(dirs)
    assert ensemble.scheme == "accuracy" and set(ensemble.weights) == {"resnet_se", "convnext_tiny", "efficientnet_b0"}
    assert len(ensemble.models["resnet_se"].models) == 2 and len(ensemble.models["convnext_tiny"].models) == 1
    # every member is scored on the images it has a score for: the first run's validation images (its alone
    # models), resnet_se there by each run whose model never trained on the image
    both = set(validated[0]) & set(validated[1])
    assert both and set(validated[0]) - both
    expected = []
    for path in validated[0]:
        probs = [run_probs[list(run_validated).index(path)]
                 for run_validated, run_probs in zip(validated, stored) if path in run_validated]
        assert all(path not in run_trained for run_trained, run_validated in zip(trained, validated)
                   if path in run_validated)
        expected.append(np.mean(probs))
    assert len(ensemble.val_labels) == len(validated[0])
    np.testing.assert_allclose(sorted(ensemble.val_member_probs["resnet_se"]), sorted(expected), rtol=1e-5)
    assert not np.allclose(sorted(ensemble.val_member_probs["resnet_se"]), sorted(stored[0]), rtol=1e-3)
    meta = run_ensemble(dirs, test_dir=demo_dir / "test", output=tmp_path / "merged.json")
    assert meta["n_val"] == len(validated[0])
    assert {m["name"]: len(m["folds"]) for m in meta["members"]}["resnet_se"] == 2
    with pytest.raises(EnsembleError, match="several --checkpoint-dir runs are weighed by --weights"):
        load_ensemble(dirs, operating_point="robust")
    with pytest.raises(EnsembleError, match="listed twice"):
        load_ensemble([dirs[0], dirs[0]])
