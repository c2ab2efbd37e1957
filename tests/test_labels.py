"""deepfake/labels.py: labels from a CSV or the challenge's JSON calls; every bad case stops with one line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from deepfake.data import DataError, list_image_files
from deepfake.labels import load_labelled_from_files, read_labels
from deepfake.results import load_results, results_path


@pytest.fixture
def flat(tmp_path, demo_dir) -> Path:
    """A Kaggle-style data folder: images/ with six images and nothing else."""
    sources = list_image_files(demo_dir / "train" / "real")[:3] + list_image_files(demo_dir / "train" / "fake")[:3]
    (tmp_path / "images").mkdir()
    for i, source in enumerate(sources):
        shutil.copy(source, tmp_path / "images" / f"img{i}.png")
    return tmp_path


def write_csv(folder: Path, rows: list[tuple[str, str]], header: str = "image_id,label") -> Path:
    path = folder / "train.csv"
    path.write_text("\n".join([header, *(f"{name},{label}" for name, label in rows)]) + "\n")
    return path


def test_a_csv_labels_its_images_by_name_with_or_without_extension(flat):
    csv = write_csv(flat, [("images/img0.png", "real"), ("images/img1", "0"), ("images/img2.png", "Real"),
                           ("images/img3", "fake"), ("images/img4.png", "1"), ("images/img5.png", "FAKE")])
    images, source = load_labelled_from_files([csv], flat)
    assert [Path(p).name for p in images.paths] == [f"img{i}.png" for i in range(6)]
    assert images.labels.tolist() == [0, 0, 0, 1, 1, 1] and images.images.shape == (6, 32, 32, 3)
    assert source == {"files": [str(csv)], "differ_from_folder_names": None}


ALL = [(f"images/img{i}.png", "real" if i < 3 else "fake") for i in range(6)]


@pytest.mark.parametrize("rows, error", [
    ([ALL[0], ("images/img1.png", "maybe"), *ALL[2:]], r"row 3 has label 'maybe': use real/fake or 0/1"),
    ([*ALL, ("images/gone.png", "real")], r"row 8 names 'images/gone.png', which is not in"),
    (ALL[:5], r"images/img5.png has no label in .*train.csv: label it there or move it out"),
    ([*ALL, ("images/img0", "fake")], r"images/img0.png has two different labels"),
])
def test_a_bad_label_a_missing_image_or_an_unlabelled_one_stops_with_one_line(flat, rows, error):
    with pytest.raises(DataError, match=error) as raised:
        read_labels([write_csv(flat, rows)], flat)
    assert "\n" not in str(raised.value)


def test_a_csv_without_the_columns_or_a_missing_label_file_is_named(flat):
    with pytest.raises(DataError, match="needs a file-name column"):
        read_labels([write_csv(flat, [("images/img0.png", "real")], header="picture,verdict")], flat)
    with pytest.raises(DataError, match="label file .*nope.csv does not exist"):
        read_labels([flat / "nope.csv"], flat)


def test_the_challenges_json_pair_labels_each_class_folder_by_number(tmp_path, demo_dir):
    data = tmp_path / "data"
    shutil.copytree(demo_dir / "train", data / "train")
    real, fake = (list_image_files(data / "train" / name) for name in ("real", "fake"))
    for folder in ("real", "fake"):  # the challenge's names: N.png
        staged = [image.rename(image.with_name(f"staged{i}.png"))
                  for i, image in enumerate(list_image_files(data / "train" / folder), start=1)]
        for i, image in enumerate(staged, start=1):
            image.rename(image.with_name(f"{i}.png"))
    calls = {"real": [{"index": i, "prediction": "fake" if i == 2 else "real"} for i in range(1, len(real) + 1)],
             "fake": [{"index": i, "prediction": "fake"} for i in range(1, len(fake) + 1)]}
    files = []
    for name, entries in calls.items():
        files.append(tmp_path / f"{name}_cifake_preds.json")
        files[-1].write_text(json.dumps(entries))

    images, source = load_labelled_from_files(files, data)
    assert len(images) == len(real) + len(fake) and int(images.labels.sum()) == len(fake) + 1
    assert source["differ_from_folder_names"] == 1
    assert images.labels[[p.endswith("real/2.png") for p in images.paths]].tolist() == [1]

    files[0].write_text(json.dumps(calls["real"] + [{"index": 999, "prediction": "real"}]))
    with pytest.raises(DataError, match=r"labels image 999, but .*train/real has no 999.png"):
        read_labels(files, data)
    files[0].write_text(json.dumps(calls["real"][1:]))
    with pytest.raises(DataError, match=r"train/real/1.png has no label"):
        read_labels(files, data)
    unnamed = tmp_path / "calls.json"
    unnamed.write_text("[]")
    with pytest.raises(DataError, match="name it real_\\*.json or fake_\\*.json"):
        read_labels([unnamed], data)


def test_the_shared_challenge_labels_differ_from_the_folders_on_25_images(shared_data):
    files = [shared_data / "labels" / f"{name}_cifake_preds.json" for name in ("real", "fake")]
    images, source = load_labelled_from_files(files, shared_data)
    assert len(images) == 1400 and source["differ_from_folder_names"] == 25
    assert int(images.labels.sum()) == 700 - 10 + 15


def test_a_run_on_a_csv_trains_on_its_labels_and_records_them(flat, tmp_path):
    from deepfake_detection import main

    more = [(f"images/img{i}.png", "real" if i < 3 else "fake") for i in range(6)]
    for i in range(6, 40):  # enough images for a split: copies of the first six, labelled alike
        shutil.copy(flat / "images" / f"img{i % 6}.png", flat / "images" / f"img{i}.png")
        more.append((f"images/img{i}.png", "real" if i % 6 < 3 else "fake"))
    csv = write_csv(flat, more)
    checkpoints = tmp_path / "run"
    assert main(["--preset", "tiny", "--data-dir", str(flat), "--labels", str(csv), "--models", "resnet_se",
                 "--checkpoint-dir", str(checkpoints), "--viz-dir", str(tmp_path / "viz"),
                 "--generated-dir", str(tmp_path / "generated"), "--device", "cpu",
                 "--set", "precision=fp32"]) == 0
    data = load_results(results_path(checkpoints))["data"]
    assert data["labels"] == {"files": [str(csv)], "differ_from_folder_names": None}
    split = json.loads((checkpoints / "split.json").read_text())
    labelled = dict(zip(split["train"]["paths"] + split["val"]["paths"], split["train"]["labels"] + split["val"]["labels"]))
    assert len(labelled) == 40 and all(labelled[str(flat / name)] == (label == "fake") for name, label in more)
    assert np.bincount(split["val"]["labels"]).tolist() == [4, 4]
