"""predict.py: the submission's call on any file or folder, with its probabilities, flags and Grad-CAM evidence;
bad files named and skipped, and the same numbers as the ensemble for the same images."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import deepfake.predict as predict_module
from deepfake.data import list_image_files, load_images
from deepfake.ensemble import Ensemble, load_ensemble
from ensemble import main as ensemble_main
from predict import main


def predict(*args: str | Path) -> int:
    return main([*map(str, args), "--device", "cpu"])


def call_lines(out: str, paths: list[Path]) -> list[str]:
    """The printed lines that call one of ``paths`` (log lines start with a time)."""
    return [line for line in out.splitlines() if any(line.startswith(f"{path}: ") for path in paths)]


@pytest.fixture
def checkpoint_dir(tiny_run) -> Path:
    return Path(tiny_run.checkpoint_dir)


@pytest.fixture
def demo_images(demo_dir) -> list[Path]:
    return list_image_files(demo_dir / "test")


def copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(source, target))


@pytest.fixture
def photos(tmp_path, demo_images) -> tuple[Path, list[Path]]:
    """A folder with nested folders, a note, a corrupt and an empty PNG, and a 64x64 RGBA image among good ones;
    returns the folder and the images that can be scored, in the order they are listed."""
    root = tmp_path / "photos"
    rgba = np.random.default_rng(0).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    (root / "a").mkdir(parents=True)
    Image.fromarray(rgba, "RGBA").save(root / "a" / "rgba.png")
    good = [copy(demo_images[0], root / "1.png"), copy(demo_images[1], root / "10.png"), root / "a" / "rgba.png",
            copy(demo_images[2], root / "b" / "3.png"), copy(demo_images[3], root / "b" / "c" / "4.png")]
    (root / "notes.txt").write_text("not an image")
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (root / "b" / "empty.png").write_bytes(b"")
    (root / ".DS_Store").write_bytes(b"\0")
    return root, good


def test_a_single_file_gets_one_line_and_one_record(checkpoint_dir, demo_images, tmp_path, capsys):
    image, output = demo_images[0], tmp_path / "one.json"
    assert predict(image, "--checkpoint-dir", checkpoint_dir, "--threshold", "0.5", "--output", output,
                   "--weights", "accuracy") == 0

    [record] = json.loads(output.read_text())
    assert list(record) == ["path", "proba_ensemble", "proba_convnext_tiny", "proba_efficientnet_b0",
                            "proba_resnet_se", "prediction", "resized", "converted"]
    assert record["path"] == str(image) and (record["resized"], record["converted"]) == (False, False)
    assert record["prediction"] == ("fake" if record["proba_ensemble"] >= 0.5 else "real")
    out = capsys.readouterr().out
    assert call_lines(out, [image]) == [
        f"{image}: {record['prediction']} (fake probability {record['proba_ensemble']:.4f})"]
    assert (f"scored 1 image: {int(record['prediction'] == 'real')} real, {int(record['prediction'] == 'fake')} "
            f"fake (cut 0.5000, from --threshold); skipped 0 unreadable files") in out


def test_a_folder_is_searched_recursively_and_bad_files_are_named_and_skipped(checkpoint_dir, photos, tmp_path,
                                                                              capsys, caplog):
    root, good = photos
    output = tmp_path / "predictions.csv"
    with caplog.at_level(logging.INFO, logger="deepfake"):
        assert predict(root, "--checkpoint-dir", checkpoint_dir, "--output", output) == 0

    table = pd.read_csv(output)
    assert list(table["path"]) == [str(p) for p in good]  # natural order, a folder's files before its subfolders
    ensemble = load_ensemble(checkpoint_dir, device="cpu")
    member_probs, ensemble_probs = ensemble.predict(load_images(good)[0])
    np.testing.assert_allclose(table["proba_ensemble"], ensemble_probs, rtol=1e-6)
    for name, probs in member_probs.items():
        np.testing.assert_allclose(table[f"proba_{name}"], probs, rtol=1e-6)
    assert list(table["prediction"]) == ["fake" if p >= ensemble.threshold else "real" for p in ensemble_probs]
    flagged = table.set_index("path")[["resized", "converted"]]
    assert flagged.loc[str(root / "a" / "rgba.png")].tolist() == [True, True]  # 64x64 RGBA: resized and converted
    assert not flagged.drop(str(root / "a" / "rgba.png")).to_numpy().any()

    assert f"skipped {root / 'b' / 'broken.png'}: the file is corrupt or not an image" in caplog.text
    assert f"skipped {root / 'b' / 'empty.png'}: the file is empty" in caplog.text
    assert f"ignored 1 file in the folders, not PNG, JPEG, WebP or BMP by name ({root / 'notes.txt'})" in caplog.text
    assert ".DS_Store" not in caplog.text
    out = capsys.readouterr().out
    assert len(call_lines(out, good)) == len(good)
    assert call_lines(out, [root / "a" / "rgba.png"])[0].endswith("[resized to 32x32, converted to RGB]")
    fake = int((table["prediction"] == "fake").sum())
    assert (f"scored 5 images: {5 - fake} real, {fake} fake (cut {ensemble.threshold:.4f}, chosen on validation); "
            f"skipped 2 unreadable files; ignored 1 non-image file; resized 1 to 32x32, converted 1 to RGB") in out


@pytest.mark.parametrize("choice", [["--operating-point", "robust"], ["--weights", "accuracy"]])
def test_probabilities_and_calls_are_the_ensembles_for_the_same_images(run_dir, demo_dir, tmp_path, capsys, choice):
    test_dir, table_file = demo_dir / "test", tmp_path / "probabilities.csv"
    assert ensemble_main(["--checkpoint-dir", str(run_dir), "--output", str(tmp_path / "submission.json"),
                          "--test-dir", str(test_dir), "--probabilities", str(table_file), "--device", "cpu",
                          *choice]) == 0
    submitted = pd.read_csv(table_file).set_index("file")
    threshold = json.loads((tmp_path / "submission.meta.json").read_text())["threshold"]
    capsys.readouterr()

    assert predict(test_dir, "--checkpoint-dir", run_dir, "--output", tmp_path / "predictions.csv", *choice) == 0
    called = pd.read_csv(tmp_path / "predictions.csv").set_index("path")
    assert sorted(called.index) == sorted(submitted.index) and len(called) == 20
    called = called.loc[submitted.index]
    probability_columns = [c for c in submitted.columns if c.startswith("proba_")]
    members = len(json.loads((tmp_path / "submission.meta.json").read_text())["members"])
    assert len(probability_columns) == members + 1 and set(probability_columns) < set(called.columns)
    np.testing.assert_allclose(called[probability_columns], submitted[probability_columns], rtol=1e-6)
    assert (called["prediction"] == submitted["prediction"]).all()
    out = capsys.readouterr().out
    assert len(call_lines(out, [Path(f) for f in called.index])) == 20
    assert f"(cut {threshold:.4f}, chosen on validation)" in out


def test_many_images_are_scored_batch_by_batch_under_a_progress_bar(checkpoint_dir, photos, tmp_path, capsys,
                                                                    monkeypatch):
    root, good = photos
    batch_sizes = []
    predict_batch = Ensemble.predict

    def recording(self, images):
        batch_sizes.append(len(images))
        return predict_batch(self, images)

    monkeypatch.setattr(Ensemble, "predict", recording)
    monkeypatch.setattr(predict_module, "BATCH_FILES", 2)
    monkeypatch.setattr(predict_module, "ONE_LINE_EACH", 3)
    output = tmp_path / "predictions.json"
    assert predict(root, "--checkpoint-dir", checkpoint_dir, "--output", output) == 0

    assert batch_sizes == [2, 2, 1]  # files [1, 10], [rgba, 3], [broken, empty] (none readable), [4]
    records = json.loads(output.read_text())
    _, expected = load_ensemble(checkpoint_dir, device="cpu").predict(load_images(good)[0])
    assert [r["path"] for r in records] == [str(p) for p in good]
    np.testing.assert_allclose([r["proba_ensemble"] for r in records], expected, rtol=1e-6)
    captured = capsys.readouterr()
    assert call_lines(captured.out, good) == [] and "scored 5 images" in captured.out
    assert "predict: 100%" in captured.err and "7/7" in captured.err  # every listed file, the skipped ones too


def test_explain_draws_each_images_call_with_every_models_grad_cam(checkpoint_dir, tiny_run, demo_images, tmp_path,
                                                                   monkeypatch, caplog):
    folder = tmp_path / "photos"
    for image, path in zip(demo_images, ("dog.png", "x/cat.png", "y/cat.jpg")):
        copy(image, folder / path)
    drawn, targets = [], []
    plot_call, gradcam = predict_module.plot_call, predict_module.gradcam
    monkeypatch.setattr(predict_module, "plot_call", lambda *args: drawn.append(args) or plot_call(*args))
    monkeypatch.setattr(predict_module, "gradcam",
                        lambda model, x, classes: targets.append(list(classes)) or gradcam(model, x, classes))
    explain, output = tmp_path / "explanations", tmp_path / "predictions.csv"
    assert predict(folder, "--checkpoint-dir", checkpoint_dir, "--explain", explain, "--output", output,
                   "--weights", "accuracy") == 0

    assert sorted(p.name for p in explain.iterdir()) == ["cat-2.png", "cat.png", "dog.png"]
    assert [path.name for *_, path in drawn] == ["dog.png", "cat.png", "cat-2.png"]
    table = pd.read_csv(output)
    calls = [int(call == "fake") for call in table["prediction"]]
    assert targets == [calls] * 3  # each model's map is of the ensemble's call
    for (image, title, overlays, path), (_, row) in zip(drawn, table.iterrows()):
        assert title.startswith(f"{row['path']}: {row['prediction']} (fake probability {row['proba_ensemble']:.4f}")
        assert image.shape == (32, 32, 3) and image.max() <= 1.0
        assert [label.split(" ")[0] for label in overlays] == ["convnext_tiny", "efficientnet_b0", "resnet_se"]
        for label, cam in overlays.items():
            assert f"fake probability {row['proba_' + label.split(' ')[0]]:.3f}" in label
            assert label.endswith(f"Grad-CAM for {row['prediction']}") and cam.shape == (32, 32)
            assert ("pixel backbone" in label) == tiny_run.member(label.split(" ")[0]).spectrum
        with Image.open(path) as figure:
            assert figure.format == "PNG" and figure.width > 2 * figure.height

    monkeypatch.setattr(predict_module, "EXPLAIN_LIMIT", 2)
    with caplog.at_level(logging.INFO, logger="deepfake"):
        assert predict(folder, "--checkpoint-dir", checkpoint_dir, "--explain", tmp_path / "capped") == 0
    assert sorted(p.name for p in (tmp_path / "capped").iterdir()) == ["cat.png", "dog.png"]
    assert "--explain draws the first 2 images of the 3 files" in caplog.text


def test_nothing_scored_exits_1_and_writes_nothing(checkpoint_dir, photos, tmp_path, capsys, caplog):
    root, _ = photos
    output = tmp_path / "out" / "predictions.csv"
    output.parent.mkdir()
    with caplog.at_level(logging.INFO, logger="deepfake"):
        assert predict(root / "notes.txt", root / "b" / "broken.png", "--checkpoint-dir", checkpoint_dir,
                       "--output", output) == 1
    assert f"skipped {root / 'notes.txt'}: the file is corrupt or not an image" in caplog.text
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: none of the 2 files could be read as an image (each is named above)")
    assert list(output.parent.iterdir()) == []

    empty = tmp_path / "empty"
    copy(root / "notes.txt", empty / "notes.txt")
    assert predict(empty, "--checkpoint-dir", checkpoint_dir) == 1
    assert capsys.readouterr().err.splitlines()[-1] == f"error: no PNG, JPEG, WebP or BMP files in {empty}"


@pytest.mark.parametrize("args, error", [
    (["missing.png"], "error: missing.png does not exist: name image files or folders of them"),
    (["{image}", "--output", "predictions.txt"], "error: --output predictions.txt: name a .csv or .json file"),
])
def test_a_bad_path_or_output_fails_before_the_models_load(demo_images, capsys, monkeypatch, args, error):
    monkeypatch.setattr(predict_module, "load_ensemble", lambda *a, **k: pytest.fail("models loaded"))
    assert predict(*(a.format(image=demo_images[0]) for a in args)) == 2
    assert capsys.readouterr().err.splitlines() == [error]

