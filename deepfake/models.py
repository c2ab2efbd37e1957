"""Model zoo and checkpoints: three classifiers behind one interface, sized for 32x32 inputs.

Every model takes float images in [0, 1] shaped (N, 3, H, W), normalises them itself (its first
layer) and returns (N, 2) logits, class 1 = fake. A checkpoint holds everything needed to rebuild
its model, so evaluation and the ensemble never need the training config.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import SEModule
from timm.models.efficientnet import _gen_efficientnet
from timm.models.resnet import BasicBlock
from torch import nn

from .config import MODEL_NAMES, Config
from .data import CLASS_NAMES
from .errors import DeepfakeError
from .io import save_torch

log = logging.getLogger(__name__)

HUB_PROBE_SECONDS = 3.0  # longest wait to learn that the weight hub is unreachable
SPECTRUM_GRID = (32, 17)  # rfft2 bins of a 32x32 image; other sizes are pooled to it
CHECKPOINT_KEYS = ("arch", "state_dict", "config", "phase", "classes", "metrics", "pretrained", "versions")


class CheckpointError(DeepfakeError):
    """A checkpoint is missing, unreadable or does not match the model definition."""


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------

class Normalize(nn.Module):
    """ImageNet mean/std inside the model, so callers only ever pass [0, 1] pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


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
    """normalize -> backbone, plus the spectrum head's logits when it has one (late fusion by sum).

    ``arch``, ``pretrained_loaded`` and ``width`` travel with the model.
    """

    def __init__(self, arch: str, backbone: nn.Module, pretrained_loaded: bool,
                 spectrum: SpectrumHead | None = None, width: float = 1.0) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.backbone = backbone
        self.spectrum = spectrum
        self.arch = arch
        self.pretrained_loaded = pretrained_loaded
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.backbone(self.normalize(x))
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


def _resnet_se(width: float) -> nn.Module:
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


def _convnext_tiny(width: float) -> nn.Module:
    # Stock 4x stem kept: measured at 32x32, finer stems trained no better at 3x the cost (see README).
    return timm.create_model("convnext_tiny", num_classes=len(CLASS_NAMES), dims=_scaled((96, 192, 384, 768), width))


def _efficientnet_b0(width: float) -> nn.Module:
    # timm's efficientnet_b0 entry point fixes channel_multiplier=1.0, so the width goes through the builder it calls.
    model = _gen_efficientnet("efficientnet_b0", channel_multiplier=width, num_classes=len(CLASS_NAMES))
    # Stem stride 1 (final map 2x2, not 1x1): the stock stride-2 stem barely fits 32x32 training data; see README.
    model.conv_stem.stride = (1, 1)
    return model


@dataclass(frozen=True)
class ZooEntry:
    build: Callable[[float], nn.Module]  # channel-width multiplier -> backbone
    timm_name: str | None  # source of pretrained weights; None = none exist


ZOO: dict[str, ZooEntry] = {
    "convnext_tiny": ZooEntry(_convnext_tiny, "convnext_tiny"),
    "efficientnet_b0": ZooEntry(_efficientnet_b0, "efficientnet_b0"),
    "resnet_se": ZooEntry(_resnet_se, None),
}
assert set(ZOO) == set(MODEL_NAMES), "the zoo and config.MODEL_NAMES must list the same models"


def build_model(name: str, pretrained: bool = False, spectrum: bool = False, width: float = 1.0) -> nn.Module:
    """A fresh model; with ``pretrained`` it starts from ImageNet weights where they can be had,
    with ``spectrum`` it also reads the image's Fourier spectrum (:class:`SpectrumHead`); ``width``
    multiplies every stage's channels, except for a model whose pretrained weights were found (they
    exist at full width only)."""
    if name not in ZOO:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(ZOO)}")
    if not width > 0:
        raise ValueError(f"width must be positive, got {width}")
    entry = ZOO[name]
    reference = _pretrained_weights(name, entry.timm_name) if pretrained else None
    if reference is not None and width != 1.0:
        log.info("%s: full width, not %g, so that its pretrained weights fit", name, width)
        width = 1.0
    backbone = entry.build(width)
    if reference is not None:
        _copy_matching(backbone, name, reference)
    # channels_last: 1.1x (resnet_se) to 2x (efficientnet_b0) faster CPU training here; same results.
    head = SpectrumHead(len(CLASS_NAMES)) if spectrum else None
    return Classifier(name, backbone, reference is not None, head, width).to(memory_format=torch.channels_last)


def build_from_config(name: str, config: Config) -> nn.Module:
    """The fresh model ``config`` asks for: its pretrained flag, spectrum head and width for ``name``."""
    return build_model(name, config.pretrained, name in config.spectrum_models, config.width(name))


# ---------------------------------------------------------------------------------------------
# Pretrained weights (never hangs offline: probe first, then use only the local cache)
# ---------------------------------------------------------------------------------------------

def _pretrained_weights(name: str, timm_name: str | None) -> dict[str, torch.Tensor] | None:
    """The ImageNet state dict for ``name``; None, with one warning, when there is none to be had."""
    if timm_name is None:
        log.warning("%s has no pretrained weights; training it from scratch", name)
        return None
    reference, reason = _pretrained_state_dict(timm_name)
    if reference is None:
        log.warning("%s: ImageNet weights unavailable (%s); training it from scratch", name, reason)
    return reference


def _copy_matching(backbone: nn.Module, name: str, reference: dict[str, torch.Tensor]) -> None:
    """Copy every pretrained tensor whose shape matches (the 32x32 adaptations change a few)."""
    own = backbone.state_dict()
    matching = {k: v for k, v in reference.items() if k in own and own[k].shape == v.shape}
    backbone.load_state_dict(matching, strict=False)
    skipped = sorted(set(own) - set(matching))
    log.info("%s: loaded %d pretrained tensors; kept fresh (shape differs): %s",
             name, len(matching), ", ".join(skipped) or "none")


def _pretrained_state_dict(timm_name: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    """timm's ImageNet state dict, downloaded when the hub answers, else from the local caches."""
    if _hub_reachable():
        overlay = {}
    else:
        cached = _cached_weights(timm_name)
        if cached is None:
            return None, "offline and not in the Hugging Face or torch hub cache"
        overlay = {"file": str(cached)}
    try:
        reference = timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=overlay)
    except Exception as error:  # hub, HTTP and file errors share no base class; the caller warns with the reason
        first_line = next(iter(str(error).splitlines()), "")
        return None, f"{type(error).__name__}: {first_line}"
    return reference.state_dict(), ""


def _hub_offline_requested() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return constants.HF_HUB_OFFLINE or flag in {"1", "true", "yes", "on"}


def _hub_reachable() -> bool:
    """A TCP connect to the hub in a daemon thread, so even a stuck DNS lookup costs at most the probe time."""
    if _hub_offline_requested():
        return False
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    host, port = endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)
    reachable = threading.Event()

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=HUB_PROBE_SECONDS).close()
            reachable.set()
        except OSError:
            pass

    threading.Thread(target=probe, daemon=True).start()
    reachable.wait(HUB_PROBE_SECONDS)
    return reachable.is_set()


def _cached_weights(timm_name: str) -> Path | None:
    """The weights file timm would download, if an earlier run left it in a local cache."""
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg.hf_hub_id:
        for filename in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(hit, str):
                return Path(hit)
    if cfg.url:
        legacy = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        if legacy.is_file():
            return legacy
    return None


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

def save_checkpoint(path: str | os.PathLike, model: nn.Module, *, config: dict, phase: str,
                    metrics: dict | None = None) -> None:
    """Atomically write the weights plus what is needed to rebuild and trust them."""
    payload = {
        "arch": model.arch,
        "width": float(model.width),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": _plain(config),
        "phase": phase,
        "classes": list(CLASS_NAMES),
        "metrics": _plain(metrics or {}),
        "pretrained": bool(model.pretrained_loaded),
        "versions": {"torch": str(torch.__version__), "timm": str(timm.__version__)},
    }
    save_torch(path, payload)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw payload; CheckpointError (one line naming the file and the fix) if it is missing or broken."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found: run `python deepfake_detection.py` first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch reports truncated/foreign files with many exception types
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(error).__name__}): delete it and retrain"
        ) from error
    if not isinstance(payload, dict) or not set(CHECKPOINT_KEYS) <= set(payload) or payload["arch"] not in ZOO:
        raise CheckpointError(f"{path} is not a checkpoint of this project: delete it and retrain")
    return payload


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model from the file alone, in eval mode on ``device``."""
    payload = read_checkpoint(path)
    model = build_model(payload["arch"], spectrum=any(k.startswith("spectrum.") for k in payload["state_dict"]),
                        width=float(payload.get("width", 1.0)))  # checkpoints before model_width are full width
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint {path} does not match the current {payload['arch']} definition: delete it and retrain"
        ) from error
    model.pretrained_loaded = bool(payload["pretrained"])
    return model.to(device).eval()


def _plain(value: Any) -> Any:
    """Plain Python containers and numbers only, so checkpoints load with ``weights_only=True``."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # numpy/torch scalars and arrays
        return value.tolist()
    return value
