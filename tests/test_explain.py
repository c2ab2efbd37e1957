"""Grad-CAM: a [0, 1] map of the input's size for every architecture, from a layer that still has a grid."""
import numpy as np
import pytest
import torch

from deepfake.config import MODEL_NAMES
from deepfake.explain import MIN_GRID, gradcam, target_layer
from deepfake.models import build_model


@pytest.mark.parametrize("arch", MODEL_NAMES)
def test_gradcam_map_has_the_input_size_for_each_architecture(arch):
    torch.manual_seed(0)
    model = build_model(arch).train()
    images = torch.rand(2, 3, 32, 32)
    grid = []
    hook = target_layer(model).register_forward_hook(lambda module, inputs, output: grid.append(output.shape[-2:]))

    maps = gradcam(model, images)
    hook.remove()
    assert maps.shape == (2, 32, 32) and maps.dtype.name == "float32"
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert min(grid[0]) == MIN_GRID, f"{arch} Grad-CAM layer is {tuple(grid[0])}, not the deepest with a 4x4 grid"
    assert model.training, "Grad-CAM must restore the model's mode"
    assert all(p.grad is None for p in model.parameters())

    per_class = [gradcam(model, images, target_class=c) for c in (0, 1)]
    assert not np.allclose(*per_class) and max(m.std() for m in per_class) > 0.05
    with torch.no_grad():
        predicted = model.eval()(images).argmax(1)
    np.testing.assert_allclose(maps, np.stack([per_class[c][i] for i, c in enumerate(predicted.tolist())]),
                               atol=1e-5)
