"""ImageNet weights for timm members, from a folder, the hub or the local caches; never hangs offline.

Kaggle's no-internet notebooks and this project's offline machines get weights as files (a dataset
attached to the notebook, a file shipped in a package), so a weights folder is tried first; the hub
is asked only after a short connection probe, and its caches serve when it cannot be reached.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch

from .errors import ConfigError

log = logging.getLogger(__name__)

HUB_PROBE_SECONDS = 3.0  # longest wait to learn that the weight hub is unreachable
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".bin")  # the files looked for in a weights folder, in this order


def weights_file(weights_dir: str | os.PathLike | None, timm_name: str) -> Path | None:
    """``weights_dir/<timm_name>.safetensors`` (or .pth, .bin) if one is there."""
    if not weights_dir:
        return None
    for suffix in WEIGHT_SUFFIXES:
        candidate = Path(weights_dir) / f"{timm_name}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def pretrained_state_dict(timm_name: str, weights_dir: str | os.PathLike | None = None,
                          ) -> tuple[dict[str, torch.Tensor] | None, str]:
    """(timm's ImageNet state dict for ``timm_name``, where it came from), or (None, why not)."""
    local = weights_file(weights_dir, timm_name)
    if local is not None:
        overlay, source = {"file": str(local)}, str(local)
    elif _hub_reachable():
        overlay, source = {}, "the Hugging Face hub"
    else:
        cached = _cached_weights(timm_name)
        if cached is None:
            where = f"no {timm_name}{{{','.join(WEIGHT_SUFFIXES)}}} in {weights_dir}, " if weights_dir else ""
            return None, f"{where}offline and not in the Hugging Face or torch hub cache"
        overlay, source = {"file": str(cached)}, str(cached)
    try:
        reference = timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=overlay)
    except Exception as error:  # hub, HTTP and file errors share no base class; the caller says why
        first_line = next(iter(str(error).splitlines()), "")
        return None, f"{source}: {type(error).__name__}: {first_line}"
    return reference.state_dict(), source


def require_weights(timm_names: dict[str, str], weights_dir: str | os.PathLike | None) -> None:
    """ConfigError, before any training, naming the first member (model -> timm name) whose weights are missing.

    The hub is probed once at most, and only for a member with no local file."""
    hub_reachable = None
    for model, timm_name in timm_names.items():
        if weights_file(weights_dir, timm_name) is not None or _cached_weights(timm_name) is not None:
            continue
        hub_reachable = _hub_reachable() if hub_reachable is None else hub_reachable
        if not hub_reachable:
            looked = f"{Path(weights_dir) / timm_name}{{{','.join(WEIGHT_SUFFIXES)}}}" if weights_dir else "no folder"
            raise ConfigError(
                f"{model}: no ImageNet weights for {timm_name} (looked in {looked}, the hub and its caches); put "
                f"{timm_name}.safetensors in a folder passed as --weights-dir, or run on a machine that reaches the "
                f"Hugging Face hub")


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
    if cfg is None:
        return None
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
