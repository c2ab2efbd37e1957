"""The training steps' number format, chosen for the card a run lands on.

Mixed precision pays only where the hardware computes the narrow format natively: bfloat16 on GPUs of
compute capability 8.0 and newer (A100, L4, H100) and on CPUs with AVX512-BF16 or AMX; float16 with a
gradient scaler on older GPUs (P100, T4), where bfloat16 is emulated and slower than float32. Evaluation
and its attacks always run in float32.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import ContextManager

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NATIVE_BF16_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private torch.cpu functions
NATIVE_BF16_CAPABILITY = (8, 0)  # Ampere: the first NVIDIA GPUs with bfloat16 tensor cores


@dataclass(frozen=True)
class Precision:
    """What the training steps compute in, and why (recorded in results.json)."""

    dtype: torch.dtype
    why: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def scaled(self) -> bool:
        """float16 gradients underflow without a loss scale; bfloat16 has float32's range and needs none."""
        return self.dtype == torch.float16

    def autocast(self, device: torch.device) -> ContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def scaler(self, device: torch.device) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(device.type, enabled=self.scaled)


def training_precision(setting: str, device: torch.device, bf16_model: bool = False) -> Precision:
    """The precision ``setting`` (config.precision) means on ``device``; ``bf16_model``: the model's
    recipe says ``bf16``, which on a CPU marks the models measured to train faster in bfloat16 under ``auto``."""
    if setting != "auto":
        precision = Precision(DTYPES[setting], f"precision={setting} asked for")
        if precision.dtype == torch.bfloat16 and not native_bf16(device):
            return Precision(precision.dtype, f"{precision.why} (emulated on {describe(device)}: slower than float32)")
        return precision
    if device.type == "cuda":
        if native_bf16(device):
            return Precision(torch.bfloat16, f"auto: {describe(device)} computes bfloat16 natively")
        return Precision(torch.float16, f"auto: {describe(device)} has no native bfloat16, so float16 with a "
                                        f"gradient scaler")
    if not bf16_model:
        return Precision(torch.float32, "auto: on a CPU only members whose recipe says bf16 train in bfloat16")
    if native_bf16(device):
        return Precision(torch.bfloat16, "auto: its recipe says bf16, and this CPU computes bfloat16 natively")
    return Precision(torch.float32, "auto: its recipe says bf16, but this CPU has no native bfloat16 (emulated it is "
                                    "slower than float32)")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware. ``torch.cuda.is_bf16_supported()`` also counts
    emulation (True on a T4), so GPUs are judged by compute capability."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= NATIVE_BF16_CAPABILITY
    return device.type == "cpu" and _cpu_native_bf16()


@functools.cache
def _cpu_native_bf16() -> bool:
    probes = (getattr(torch.cpu, name, lambda: False) for name in NATIVE_BF16_PROBES)  # private: may vanish
    return any(probe() for probe in probes)


def describe(device: torch.device) -> str:
    """The card by name and compute capability ("NVIDIA T4 (compute capability 7.5)"), or "this CPU"."""
    if device.type != "cuda":
        return f"this {device.type.upper()}"
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"
