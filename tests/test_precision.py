"""The training precision for each kind of card: native bfloat16 where it exists, float16 with a scaler on older
GPUs, the measured per-model rule on CPUs."""
import re

import pytest
import torch

from deepfake import precision as precision_module
from deepfake.config import make_config
from deepfake.errors import ConfigError
from deepfake.precision import native_bf16, training_precision

GPU, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.fixture
def card(monkeypatch):
    """Pretend to be the named GPU; torch.cuda.is_bf16_supported() says True on every one of them, as on a T4."""
    def pretend(name: str, capability: tuple[int, int]) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    return pretend


@pytest.mark.parametrize("name,capability,dtype", [
    ("Tesla P100-PCIE-16GB", (6, 0), torch.float16),  # Kaggle
    ("Tesla T4", (7, 5), torch.float16),  # Kaggle (2x), Colab
    ("NVIDIA A100-SXM4-40GB", (8, 0), torch.bfloat16),  # Colab
    ("NVIDIA L4", (8, 9), torch.bfloat16),  # Colab
    ("NVIDIA H100 80GB HBM3", (9, 0), torch.bfloat16),
])
def test_auto_on_a_gpu_is_bfloat16_where_native_else_float16_with_a_scaler(card, name, capability, dtype):
    card(name, capability)
    for bf16_model in (False, True):  # a recipe's bf16 is for CPUs: on a GPU every model trains mixed
        chosen = training_precision("auto", GPU, bf16_model)
        assert chosen.dtype == dtype and chosen.scaled == (dtype == torch.float16)
        assert f"{name} (compute capability {capability[0]}.{capability[1]})" in chosen.why
        assert chosen.scaler(CPU).is_enabled() == chosen.scaled


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_a_cpu_trains_only_bf16_recipes_in_bfloat16_and_only_where_native(monkeypatch, native):
    monkeypatch.setattr(precision_module, "_cpu_native_bf16", lambda: native)
    assert native_bf16(CPU) == native
    assert training_precision("auto", CPU, bf16_model=True).dtype == (torch.bfloat16 if native else torch.float32)
    other = training_precision("auto", CPU, bf16_model=False)
    assert other.dtype == torch.float32 and "only members whose recipe says bf16" in other.why
    assert not training_precision("auto", CPU, bf16_model=True).scaled


@pytest.mark.parametrize("setting,dtype", [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_an_explicit_precision_holds_for_every_model_on_every_card(card, monkeypatch, setting, dtype):
    monkeypatch.setattr(precision_module, "_cpu_native_bf16", lambda: False)
    for capability in ((7, 5), (9, 0)):
        card("a GPU", capability)
        for device in (GPU, CPU):
            for bf16_model in (False, True):
                chosen = training_precision(setting, device, bf16_model)
                assert chosen.dtype == dtype and chosen.why.startswith(f"precision={setting} asked for")
    card("Tesla T4", (7, 5))
    assert "emulated on Tesla T4" in training_precision("bf16", GPU).why


def test_float32_steps_run_outside_autocast_and_mixed_ones_inside():
    layer = torch.nn.Linear(4, 2)
    x = torch.ones(3, 4)
    for setting, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with training_precision(setting, CPU).autocast(CPU):
            assert layer(x).dtype == dtype


def test_precision_is_a_checked_training_field():
    from deepfake.config import SHARED_TRAINING_KEYS

    assert make_config("tiny").precision == "auto" and "precision" in SHARED_TRAINING_KEYS
    with pytest.raises(ConfigError, match=re.escape("precision=fp8 (choose from auto, fp32, fp16, bf16)")):
        make_config("tiny", precision="fp8")
