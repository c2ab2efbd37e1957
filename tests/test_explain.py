"""Grad-CAM: a [0, 1] map of the input's size for every architecture, from a layer that still has a grid."""
import pytest
import torch

from deepfake.config import MODEL_NAMES
from deepfake.explain import gradcam, target_layer
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
    assert min(grid[0]) >= 4, f"{arch} Grad-CAM layer is only {tuple(grid[0])}"
    assert model.training, "Grad-CAM must restore the model's mode"
    assert all(p.grad is None for p in model.parameters())
    assert gradcam(model, images, target_class=1).shape == (2, 32, 32)
