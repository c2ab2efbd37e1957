"""Checkpoint files: the weights plus everything needed to rebuild and trust them.

A checkpoint holds its architecture, width, input size and config, so evaluation, the ensemble and
prediction rebuild the model from the file alone, never from the training config.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from .data import CLASS_NAMES
from .errors import CheckpointError
from .io import save_torch
from .models import NATIVE_SIZE, build_model, zoo_entry

CHECKPOINT_KEYS = ("arch", "state_dict", "config", "phase", "classes", "metrics", "pretrained", "versions")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, *, config: dict, phase: str,
                    metrics: dict | None = None) -> None:
    """Atomically write the weights plus what is needed to rebuild and trust them."""
    payload = {
        "arch": model.arch,
        "width": float(model.width),
        "input_size": int(model.input_size),
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
    if not isinstance(payload, dict) or not set(CHECKPOINT_KEYS) <= set(payload):
        raise CheckpointError(f"{path} is not a checkpoint of this project: delete it and retrain")
    try:
        zoo_entry(payload["arch"])
    except ValueError as error:
        raise CheckpointError(f"{path} holds a {payload['arch']!r}, which this timm version does not know: "
                              f"install the timm version it names ({payload['versions'].get('timm')})") from error
    return payload


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model from the file alone, in eval mode on ``device``."""
    payload = read_checkpoint(path)
    model = build_model(payload["arch"], spectrum=any(k.startswith("spectrum.") for k in payload["state_dict"]),
                        width=float(payload.get("width", 1.0)), input_size=int(payload.get("input_size", NATIVE_SIZE)))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint {path} does not match the current {payload['arch']} definition: delete it and retrain"
        ) from error
    model.pretrained_loaded = bool(payload["pretrained"])
    return model.to(device).eval()


def file_sha256(path: str | os.PathLike) -> str:
    """The checkpoint file's digest: it names exactly which weights a submission or a frontier came from."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


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
