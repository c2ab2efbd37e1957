"""The detectors: three classifiers (and any timm architecture) behind one interface.

Every model takes float images in [0, 1] shaped (N, 3, H, W), resizes them to its input size and
normalises them itself (its first layers), and returns (N, 2) logits, class 1 = fake. So attacks,
corruptions and Grad-CAM work in the original pixels whatever size the network sees.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable

import timm
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import SEModule
from timm.models.efficientnet import _gen_efficientnet
from timm.models.resnet import BasicBlock
from torch import nn

from .config import Config
from .data import CLASS_NAMES
from .pretrained import pretrained_state_dict

log = logging.getLogger(__name__)

SPECTRUM_GRID = (32, 17)  # rfft2 bins of a 32x32 image; other sizes are pooled to it
NATIVE_SIZE = 32  # the images' own side: below twice it, EfficientNet-B0 keeps a stride-1 stem


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------

class Normalize(nn.Module):
    """The backbone's mean/std inside the model, so callers only ever pass [0, 1] pixels."""

    def __init__(self, mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
                 std: tuple[float, ...] = IMAGENET_DEFAULT_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Resize(nn.Module):
    """Bilinear resize to the network's input size: ImageNet features need objects larger than 32 pixels.

    Inside the model, so gradients flow through it and attack budgets stay in the original image's pixels.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (self.size, self.size):
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class SpectrumHead(nn.Module):
    """Logits read from the log-magnitude Fourier spectrum of each colour channel.

    Generators' upsampling and decoders leave traces at fixed frequencies (notebook 01 shows CIFAKE's):
    a per-frequency standardisation and a small MLP read them directly, where a CNN on pixels has to
    learn them from ~1,000 images.
    """

    def __init__(self, classes: int, hidden: int = 128) -> None:
        super().__init__()
        features = 3 * SPECTRUM_GRID[0] * SPECTRUM_GRID[1]
        self.norm = nn.BatchNorm1d(features)  # running per-frequency mean/std of the log spectrum
        self.head = nn.Sequential(
            nn.Dropout(0.2), nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Dropout(0.3),
            nn.Linear(hidden, classes),
        )

    @staticmethod
    def log_spectrum(x: torch.Tensor) -> torch.Tensor:
        """(N, 3, *SPECTRUM_GRID) log-magnitudes of the mean-free image's 2-D real FFT."""
        x = x.float()
        spectrum = torch.fft.rfft2(x - x.mean((2, 3), keepdim=True), norm="ortho").abs().add(1e-4).log()
        if spectrum.shape[-2:] != SPECTRUM_GRID:
            spectrum = nn.functional.adaptive_avg_pool2d(spectrum, SPECTRUM_GRID)
        return spectrum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.log_spectrum(x).flatten(1)))


class Classifier(nn.Module):
    """resize -> normalize -> backbone, plus the spectrum head's logits when it has one (late fusion by sum).

    The spectrum head reads the original pixels. ``arch``, ``pretrained_loaded``, ``width`` and
    ``input_size`` travel with the model.
    """

    def __init__(self, arch: str, backbone: nn.Module, pretrained_loaded: bool,
                 spectrum: SpectrumHead | None = None, width: float = 1.0, input_size: int = NATIVE_SIZE,
                 normalize: Normalize | None = None) -> None:
        super().__init__()
        self.resize = Resize(input_size)
        self.normalize = normalize or Normalize()
        self.backbone = backbone
        self.spectrum = spectrum
        self.arch = arch
        self.pretrained_loaded = pretrained_loaded
        self.width = width
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.backbone(self.normalize(self.resize(x)))
        return logits if self.spectrum is None else logits + self.spectrum(x)


def _se_stage(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two basic residual blocks (the first halves the resolution), then squeeze-and-excitation."""
    shortcut = nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False), nn.BatchNorm2d(out_channels)
    )
    return nn.Sequential(
        BasicBlock(in_channels, out_channels, stride=2, downsample=shortcut),
        BasicBlock(out_channels, out_channels),
        SEModule(out_channels, rd_ratio=1 / 16),
    )


def _scaled(channels: tuple[int, ...], width: float) -> tuple[int, ...]:
    """Channel counts times ``width``, rounded to multiples of 8 (what CPU kernels and SE reductions like)."""
    return tuple(max(8, int(round(c * width / 8)) * 8) for c in channels)


def _resnet_se(width: float, input_size: int) -> nn.Module:
    """A small ResNet built for 32x32 (no strided stem): 32 -> 16 -> 8 -> 4 pixels."""
    stem, c1, c2, c3 = _scaled((64, 128, 256, 512), width)
    return nn.Sequential(
        nn.Conv2d(3, stem, 3, padding=1, bias=False),
        nn.BatchNorm2d(stem),
        nn.ReLU(inplace=True),
        _se_stage(stem, c1),
        _se_stage(c1, c2),
        _se_stage(c2, c3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.4),
        nn.Linear(c3, 256),
        nn.ReLU(inplace=True),
        nn.Dropout(0.3),
        nn.Linear(256, len(CLASS_NAMES)),
    )


def _convnext_tiny(width: float, input_size: int) -> nn.Module:
    # Stock 4x stem kept: measured at 32x32, finer stems trained no better at 3x the cost (benchmarks/LEVERS.md).
    return timm.create_model("convnext_tiny", num_classes=len(CLASS_NAMES), dims=_scaled((96, 192, 384, 768), width))


def _efficientnet_b0(width: float, input_size: int) -> nn.Module:
    # timm's efficientnet_b0 entry point fixes channel_multiplier=1.0, so the width goes through the builder it calls.
    model = _gen_efficientnet("efficientnet_b0", channel_multiplier=width, num_classes=len(CLASS_NAMES))
    if input_size < 2 * NATIVE_SIZE:
        # Stem stride 1 (final map 2x2, not 1x1): the stock stride-2 stem barely fits 32x32 training data.
        model.conv_stem.stride = (1, 1)
    return model


def _timm_model(name: str) -> Callable[[float, int], nn.Module]:
    """Any timm architecture, stock, with a two-class head."""
    def build(width: float, input_size: int) -> nn.Module:
        if width != 1.0:
            raise ValueError(f"{name} is built at full width only (its recipe gives width={width})")
        return timm.create_model(name, num_classes=len(CLASS_NAMES))
    return build


@dataclass(frozen=True)
class ZooEntry:
    build: Callable[[float, int], nn.Module]  # (channel-width multiplier, input size) -> backbone
    timm_name: str | None  # source of pretrained weights and of the normalisation; None = none exist


ZOO: dict[str, ZooEntry] = {
    "convnext_tiny": ZooEntry(_convnext_tiny, "convnext_tiny"),
    "efficientnet_b0": ZooEntry(_efficientnet_b0, "efficientnet_b0"),
    "resnet_se": ZooEntry(_resnet_se, None),
}


def zoo_entry(name: str) -> ZooEntry:
    """The zoo's entry for ``name``, else a stock timm model of that name; ValueError if neither exists."""
    if name in ZOO:
        return ZOO[name]
    if timm.is_model(name):
        return ZooEntry(_timm_model(name), name)
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(ZOO)} or any timm model name")


def _normalize(timm_name: str | None) -> Normalize:
    """The normalisation the backbone's ImageNet weights were trained with (timm's record of it)."""
    cfg = timm.models.get_pretrained_cfg(timm_name) if timm_name else None
    return Normalize(cfg.mean, cfg.std) if cfg is not None else Normalize()


def build_model(name: str, pretrained: bool = False, spectrum: bool = False, width: float = 1.0,
                input_size: int = NATIVE_SIZE, weights_dir: str | os.PathLike | None = None) -> nn.Module:
    """A fresh model; with ``pretrained`` it starts from ImageNet weights where they can be had
    (``weights_dir`` first: :mod:`deepfake.pretrained`), with ``spectrum`` it also reads the image's
    Fourier spectrum (:class:`SpectrumHead`); ``width`` multiplies every stage's channels, except for a
    model whose pretrained weights were found (they exist at full width only); ``input_size`` is the
    side images are resized to before the backbone."""
    entry = zoo_entry(name)
    if not width > 0:
        raise ValueError(f"width must be positive, got {width}")
    reference = _pretrained_weights(name, entry.timm_name, weights_dir) if pretrained else None
    if reference is not None and width != 1.0:
        log.info("%s: full width, not %g, so that its pretrained weights fit", name, width)
        width = 1.0
    backbone = entry.build(width, input_size)
    if reference is not None:
        _copy_matching(backbone, name, reference)
        # A new head starts at zero: timm's init for two classes gives ImageNet features logits of about +-3,
        # confidently wrong calls whose gradients first scramble the pretrained layers.
        for parameter in backbone.get_classifier().parameters():
            nn.init.zeros_(parameter)
    head = SpectrumHead(len(CLASS_NAMES)) if spectrum else None
    model = Classifier(name, backbone, reference is not None, head, width, input_size, _normalize(entry.timm_name))
    # channels_last: 1.1x (resnet_se) to 2x (efficientnet_b0) faster CPU training here; same results.
    return model.to(memory_format=torch.channels_last)


def build_from_config(name: str, config: Config) -> nn.Module:
    """The fresh model ``name``'s recipe asks for: its pretrained flag, spectrum head, width and input size
    (ResNet-SE, built for 32x32 and without ImageNet weights, always sees the images' own size)."""
    recipe = config.member(name)
    scaled = zoo_entry(name).timm_name is not None and recipe.input_size
    return build_model(name, recipe.pretrained, recipe.spectrum, recipe.width,
                       recipe.input_size if scaled else config.image_size, config.weights_dir)


def _pretrained_weights(name: str, timm_name: str | None, weights_dir) -> dict[str, torch.Tensor] | None:
    """The ImageNet state dict for ``name``; None, with one warning, when there is none to be had."""
    if timm_name is None:
        log.warning("%s has no pretrained weights; training it from scratch", name)
        return None
    reference, source = pretrained_state_dict(timm_name, weights_dir)
    if reference is None:
        log.warning("%s: ImageNet weights unavailable (%s); training it from scratch", name, source)
    else:
        log.info("%s: ImageNet weights from %s", name, source)
    return reference


def _copy_matching(backbone: nn.Module, name: str, reference: dict[str, torch.Tensor]) -> None:
    """Copy every pretrained tensor whose shape matches (the new head and the 32x32 adaptations differ)."""
    own = backbone.state_dict()
    matching = {k: v for k, v in reference.items() if k in own and own[k].shape == v.shape}
    backbone.load_state_dict(matching, strict=False)
    skipped = sorted(set(own) - set(matching))
    log.info("%s: loaded %d pretrained tensors; kept fresh (shape differs): %s",
             name, len(matching), ", ".join(skipped) or "none")
