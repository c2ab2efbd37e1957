"""Grad-CAM maps: which part of a 32x32 image drove the real/fake decision.

The candidate layers are a model's stages: named for the zoo's architectures, timm's
``feature_info`` for any other. At 32x32 input the last stage of every model is 1x1 or 2x2, which
upsamples to a uniform blob, so the map comes from the deepest candidate that still has a
MIN_GRID x MIN_GRID grid: coarse, but it can point at a quadrant. The map explains the pixel
backbone only; a model's spectrum head (models.SpectrumHead) adds logits it does not cover.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from .inference import eval_mode

MIN_GRID = 4  # cells per side of the map Grad-CAM reads

# arch -> its stages in depth order; the deepest one with a MIN_GRID grid at the input size is used
CANDIDATE_LAYERS: dict[str, Callable[[nn.Module], list[nn.Module]]] = {
    "convnext_tiny": lambda model: list(model.backbone.stages),
    "efficientnet_b0": lambda model: [*model.backbone.blocks, model.backbone.conv_head],
    "resnet_se": lambda model: [layer for layer in model.backbone if isinstance(layer, nn.Sequential)],  # SE stages
}


def target_layer(model: nn.Module, image_size: int = 32) -> nn.Module:
    """The deepest candidate layer of ``model.arch`` whose map is at least MIN_GRID cells wide at ``image_size``."""
    candidates = _candidates(model)
    grid: dict[int, int] = {}  # candidate index -> cells per side of its output

    def record(index: int):
        return lambda module, inputs, output: grid.__setitem__(index, min(output.shape[-2:]))

    hooks = [layer.register_forward_hook(record(i)) for i, layer in enumerate(candidates)]
    device = next(model.parameters()).device
    try:
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    usable = [i for i, cells in grid.items() if cells >= MIN_GRID]
    return candidates[max(usable, default=0)]


def _candidates(model: nn.Module) -> list[nn.Module]:
    if model.arch in CANDIDATE_LAYERS:
        return CANDIDATE_LAYERS[model.arch](model)
    stages = getattr(model.backbone, "feature_info", None)
    if not stages:
        raise ValueError(f"no Grad-CAM layers known for {model.arch!r}; add them to CANDIDATE_LAYERS")
    return [model.backbone.get_submodule(stage["module"]) for stage in stages]


def target_layer_name(model: nn.Module, image_size: int = 32) -> str:
    """Dotted module path of the target layer, recorded next to the maps."""
    layer = target_layer(model, image_size)
    return next(name for name, module in model.named_modules() if module is layer)


def gradcam(model: nn.Module, images: torch.Tensor, target_class: int | Sequence[int] | None = None) -> np.ndarray:
    """(N, H, W) maps in [0, 1] at the input's size, for ``target_class`` (one for all images, or one per
    image) or each image's predicted class.

    ``images`` are float [0, 1] (N, 3, H, W) on the model's device; the model's mode is restored
    and no parameter gradient is left behind.
    """
    classes = [target_class] * len(images) if isinstance(target_class, int) else target_class
    targets = None if classes is None else [ClassifierOutputTarget(int(c)) for c in classes]
    with eval_mode(model), GradCAM(model, [target_layer(model, images.shape[-1])]) as cam:
        maps = cam(input_tensor=images, targets=targets)
    model.zero_grad(set_to_none=True)
    return np.clip(maps, 0.0, 1.0).astype(np.float32)
