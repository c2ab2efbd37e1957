"""Robust self-training: the teacher's calls on the test images join the other members' phase 2, exactly resumed."""
import logging
import re
import shutil

import numpy as np
import pytest
import torch

from conftest import run_config
from deepfake.checkpoints import read_checkpoint
from deepfake.data import DataError, ImageSet, load_test
from deepfake.errors import ConfigError
from deepfake.inference import predict_fake_proba
from deepfake.models import build_model
from deepfake.pipeline import run
from deepfake.results import load_results, results_path
from deepfake.self_training import teacher_labelled

MODELS = ("resnet_se", "efficientnet_b0")


def test_the_teacher_labels_each_test_image_by_its_call_and_never_a_validation_image(demo_dir):
    torch.manual_seed(0)
    teacher = build_model("resnet_se").eval()
    test, _ = load_test(demo_dir / "test", 32)
    val = ImageSet(test.images[[3]], np.array([1]), ["val/3.png"])  # a validation image that is also a test image

    taught, digest = teacher_labelled(teacher, "resnet_se", demo_dir / "test", val, 32, torch.device("cpu"))

    kept = [i for i in range(len(test)) if i != 3]
    assert taught.paths == [test.paths[i] for i in kept]
    expected = (predict_fake_proba(teacher, test.images[kept]) >= 0.5).astype(np.int64)
    assert np.array_equal(taught.labels, expected)
    assert re.fullmatch(r"[0-9a-f]{12}", digest)
    other, other_digest = teacher_labelled(teacher, "resnet_se", demo_dir / "test", val.subset([]), 32,
                                           torch.device("cpu"))
    assert len(other) == len(test) and other_digest != digest


def test_students_train_on_the_taught_images_and_resume_exactly(tmp_path, demo_dir, caplog):
    config = run_config(tmp_path, demo_dir, models=MODELS, self_training_teacher="efficientnet_b0")
    with caplog.at_level(logging.INFO, logger="deepfake"):
        run(config)
    checkpoints = tmp_path / "checkpoints"
    taught = load_results(results_path(checkpoints))["self_training"]
    assert taught["teacher"] == "efficientnet_b0" and taught["students"] == ["resnet_se"]
    assert taught["images"] == 20 and 0 <= taught["called_fake"] <= 20
    pools = dict(re.findall(r"(\w+): finetune phase, \d+ epochs on (\d+) images", caplog.text))
    assert int(pools["resnet_se"]) == int(pools["efficientnet_b0"]) + 20
    student, teacher = checkpoints / "resnet_se_final.pt", checkpoints / "efficientnet_b0_final.pt"
    assert read_checkpoint(student)["metrics"]["self_training"] == taught["digest"]
    assert "self_training" not in read_checkpoint(teacher)["metrics"]
    written = {path: path.stat().st_mtime_ns for path in checkpoints.glob("*.pt")}

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="deepfake"):  # the teacher's base model is reused, not retrained
        run(run_config(tmp_path, demo_dir, models=("resnet_se",), self_training_teacher="efficientnet_b0"))
    assert "resnet_se: final checkpoint matches the config, skipping phase 2" in caplog.text
    assert {path: path.stat().st_mtime_ns for path in checkpoints.glob("*.pt")} == written

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="deepfake"):  # no teacher: only the student's phase 2 reruns
        run(run_config(tmp_path, demo_dir, models=("resnet_se",)))
    assert "resnet_se: base checkpoint matches the config, skipping phase 1" in caplog.text
    changed = {path.name for path in checkpoints.glob("*.pt") if path.stat().st_mtime_ns != written[path]}
    assert changed == {"resnet_se_final.pt"}
    assert "self_training" not in read_checkpoint(student)["metrics"]

def test_a_teacher_without_a_base_model_or_test_images_stops_before_training(tmp_path, demo_dir):
    with pytest.raises(ConfigError, match="self_training_teacher efficientnet_b0 has no base model"):
        run(run_config(tmp_path, demo_dir, models=("resnet_se",), self_training_teacher="efficientnet_b0"))
    data = tmp_path / "data"
    shutil.copytree(demo_dir / "train", data / "train")
    with pytest.raises(DataError, match="self_training_teacher needs unlabelled images in .*test"):
        run(run_config(tmp_path, data, models=MODELS, self_training_teacher="efficientnet_b0"))
    assert not list((tmp_path / "checkpoints").glob("*.pt"))
    with pytest.raises(ConfigError, match="unknown model in self_training_teacher"):
        run_config(tmp_path, demo_dir, self_training_teacher="no_such_model")
