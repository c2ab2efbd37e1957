"""Prediction: flip test-time augmentation averages an image with its left-right mirror."""
import numpy as np
import torch
from torch import nn

from deepfake.inference import predict_fake_proba


class LeftMinusRight(nn.Module):
    """Calls an image fake the brighter its left half is than its right: mirroring reverses the call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[3] // 2
        lean = x[..., :half].mean((1, 2, 3)) - x[..., half:].mean((1, 2, 3))
        return torch.stack([-lean, lean], 1) * 10


def test_flip_tta_averages_each_image_with_its_left_right_mirror():
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    images[:3, :, :16] //= 4  # darker left halves: these lean real, the others are left to chance
    model = LeftMinusRight()
    plain = predict_fake_proba(model, images)
    mirrored = predict_fake_proba(model, images[:, :, ::-1])
    averaged = predict_fake_proba(model, images, tta_flip=True, batch_size=4)
    np.testing.assert_allclose(averaged, (plain + mirrored) / 2, rtol=1e-6)
    assert np.abs(averaged - plain).max() > 0.1
    assert (plain[:3] < 0.1).all() and (mirrored[:3] > 0.9).all()


def test_predicting_through_a_wrapper_leaves_its_eval_mode_members_as_they_were():
    """A wrapper in training mode (a fresh nn.Module, an ensemble's container) must not switch its members into
    training: their BatchNorm would then call with batch statistics and overwrite its running ones."""
    torch.manual_seed(0)
    member = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    member(torch.rand(2, 3, 8, 8))
    member.eval()
    wrapper = nn.Sequential(member)
    assert wrapper.training
    running_mean = member[1].running_mean.clone()
    first = predict_fake_proba(wrapper, images)
    assert wrapper.training and not any(m.training for m in member.modules())
    np.testing.assert_array_equal(predict_fake_proba(wrapper, images), first)
    assert torch.equal(member[1].running_mean, running_mean)
