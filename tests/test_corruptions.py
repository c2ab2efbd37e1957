"""Corruptions: same shape/dtype/range, deterministic for a seed, monotone in severity, exact parameters."""
import numpy as np
import pytest

from deepfake.corruptions import CORRUPTIONS, apply_corruption, corrupt, severity_value


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Smooth gradients plus texture, closer to photos than uniform noise (JPEG/blur act on edges)."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(30, 220, 32)
    base = (ramp[None, :, None] + ramp[:, None, None]) / 2
    texture = rng.normal(0, 12, (6, 32, 32, 3))
    return np.clip(base + texture, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_keeps_shape_dtype_and_is_deterministic(images, name):
    first = corrupt(images, name, 2, seed=3)
    assert first.shape == images.shape and first.dtype == np.uint8
    assert np.array_equal(first, corrupt(images, name, 2, seed=3))
    assert not np.array_equal(first, images)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_higher_severity_changes_the_image_more(images, name):
    change = [np.abs(corrupt(images, name, s, seed=0).astype(int) - images).mean() for s in (1, 3)]
    assert change[1] > change[0] > 0


def test_explicit_parameters_match_the_benchmark_settings(images):
    assert np.array_equal(apply_corruption(images, "jpeg", 40, seed=1), corrupt(images, "jpeg", 3, seed=1))
    assert severity_value("gaussian_noise", 2) == 0.08 and severity_value("gaussian_blur", 2) == 1.0
    grey = np.full((4, 32, 32, 3), 128, np.uint8)
    noise = apply_corruption(grey, "gaussian_noise", 0.08, seed=0).astype(float) - 128
    assert abs(noise.std() / 255 - 0.08) < 0.005  # sigma in [0, 1] pixel units


def test_unknown_corruption_or_severity_fails_clearly(images):
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corrupt(images, "fog", 1, seed=0)
    with pytest.raises(ValueError, match="severity must be one of"):
        corrupt(images, "jpeg", 4, seed=0)
