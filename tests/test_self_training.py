"""Robust self-training: the teacher's calls on the test images, never on a validation image; what stops a run
(the resume and the students' phase 2: tests/test_pipeline.py)."""
import re
import shutil

import numpy as np
import pytest
import torch

from conftest import run_config
from deepfake.data import DataError, ImageSet, load_test
from deepfake.errors import ConfigError
from deepfake.inference import predict_fake_proba
from deepfake.models import build_model
from deepfake.pipeline import run
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
    with pytest.raises(ConfigError, match="pretrained is off: add --pretrained"):
        run_config(tmp_path, demo_dir, self_training_teacher="pretrained")
