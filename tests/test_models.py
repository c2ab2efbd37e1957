"""Every model speaks the same [0, 1]-in, 2-logits-out interface; checkpoints rebuild it exactly; offline is fast."""
from __future__ import annotations

import copy
import logging
import time

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import SEModule
from torch import nn

from deepfake.checkpoints import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from deepfake.config import MODEL_NAMES, make_config
from deepfake.models import build_from_config, build_model


@pytest.fixture(autouse=True)
def empty_weight_caches(tmp_path, monkeypatch):
    """No test may find (or fetch) real ImageNet weights: point both caches at empty folders, force offline."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    """Built once per file: ConvNeXt-Tiny alone takes about a second to initialise."""
    return {name: build_model(name) for name in MODEL_NAMES}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_maps_unit_images_to_two_logits(name, models, images):
    model = copy.deepcopy(models[name]).eval()
    with torch.no_grad():
        logits = model(images)
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()
    assert model.arch == name and model.pretrained_loaded is False


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_normalisation_follows_the_resize_at_the_front(name, models):
    model = models[name]
    assert list(model.children())[:2] == [model.resize, model.normalize] and model.resize.size == 32
    mean_image = torch.tensor(timm.data.IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    assert torch.allclose(model.normalize(mean_image), torch.zeros(1, 3, 4, 4), atol=1e-6)


def test_resnet_se_has_three_squeeze_excitation_stages_and_the_specified_head(models):
    model = models["resnet_se"]
    assert sum(isinstance(m, SEModule) for m in model.modules()) == 3
    linears = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [(512, 256), (256, 2)]
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.4, 0.3]


def test_unknown_model_name_fails_loudly():
    with pytest.raises(ValueError, match="resnet_se or any timm model name"):
        build_model("not_a_network")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_checkpoint_round_trip_gives_identical_logits(name, models, images, tmp_path):
    model = copy.deepcopy(models[name])
    with torch.no_grad():
        model.train()(images)  # move BatchNorm running stats off their defaults
        model.eval()
        expected = model(images)
    path = tmp_path / f"{name}.pt"
    save_checkpoint(path, model, config={"seed": 42, "fgsm_epsilons": (0.02, 0.03)}, phase="base",
                    metrics={"val": {"accuracy": np.float64(0.75)}})

    restored = load_checkpoint(path)
    assert not restored.training and restored.arch == name
    with torch.no_grad():
        assert torch.equal(restored(images), expected)
    payload = read_checkpoint(path)
    assert payload["classes"] == ["real", "fake"] and payload["phase"] == "base" and payload["pretrained"] is False
    assert payload["metrics"]["val"]["accuracy"] == 0.75 and payload["config"]["fgsm_epsilons"] == [0.02, 0.03]
    assert set(payload["versions"]) == {"torch", "timm"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # atomic: no temp file left


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_width_scales_channels_and_survives_a_checkpoint(name, models, images, tmp_path):
    narrow = build_model(name, width=0.5).eval()
    full_size = sum(p.numel() for p in models[name].parameters())
    assert narrow.width == 0.5 and sum(p.numel() for p in narrow.parameters()) < 0.4 * full_size
    path = tmp_path / f"{name}.pt"
    save_checkpoint(path, narrow, config={}, phase="base")
    restored = load_checkpoint(path)
    assert restored.width == 0.5
    with torch.no_grad():
        assert torch.equal(restored(images), narrow(images))


def test_width_rounds_resnet_se_channels_to_multiples_of_eight():
    linears = [m.in_features for m in build_model("resnet_se", width=0.3).modules() if isinstance(m, nn.Linear)]
    assert linears == [152, 256]  # 512 * 0.3 = 153.6 -> 152
    with pytest.raises(ValueError, match="width must be positive"):
        build_model("resnet_se", width=0.0)


def test_pretrained_models_without_weights_keep_the_asked_width(caplog):
    """Offline with nothing cached, the fallback trains at the recipe's width, not at the weights' full width."""
    with caplog.at_level(logging.INFO, logger="deepfake.models"):
        assert build_model("efficientnet_b0", pretrained=True, width=0.5).width == 0.5
    assert "full width" not in caplog.text
    assert build_model("resnet_se", pretrained=True, width=0.5).width == 0.5  # no weights exist


def test_build_from_config_gives_each_model_its_spectrum_head_and_width():
    config = make_config("seed", **{"convnext_tiny.spectrum": True, "convnext_tiny.width": 0.5})
    convnext, resnet = build_from_config("convnext_tiny", config), build_from_config("resnet_se", config)
    assert (convnext.spectrum is not None, convnext.width) == (True, 0.5)
    assert (resnet.spectrum is None, resnet.width) == (True, 1.0)


def test_checkpoints_without_a_width_load_at_full_width(models, tmp_path):
    path = tmp_path / "resnet_se.pt"
    save_checkpoint(path, models["resnet_se"], config={}, phase="base")
    payload = torch.load(path, weights_only=True)
    del payload["width"]  # written before widths existed
    torch.save(payload, path)
    assert load_checkpoint(path).width == 1.0


def test_missing_checkpoint_names_the_file_and_the_fix(tmp_path):
    path = tmp_path / "resnet_se_final.pt"
    with pytest.raises(CheckpointError, match="deepfake_detection.py") as error:
        read_checkpoint(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "content", [b"not a checkpoint", None, {"weights": [1, 2]}], ids=["garbage", "truncated", "foreign"]
)
def test_broken_checkpoint_says_delete_and_retrain(content, models, tmp_path):
    path = tmp_path / "model.pt"
    if content is None:
        save_checkpoint(path, models["resnet_se"], config={}, phase="base")
        path.write_bytes(path.read_bytes()[:5000])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match="delete it and retrain") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_checkpoint_from_another_model_definition_is_rejected(models, tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, models["resnet_se"], config={}, phase="base")
    payload = read_checkpoint(path)
    payload["state_dict"].pop(next(iter(payload["state_dict"])))
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="delete it and retrain"):
        load_checkpoint(path)


@pytest.mark.parametrize("name", ["efficientnet_b0", "resnet_se"])
def test_offline_pretrained_falls_back_fast_with_one_warning(name, caplog):
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="deepfake.models"):
        model = build_model(name, pretrained=True)
    assert time.perf_counter() - started < 10
    assert model.pretrained_loaded is False
    assert [r.levelno for r in caplog.records] == [logging.WARNING] and name in caplog.text


def test_offline_pretrained_uses_cached_weights_where_shapes_match(tmp_path, caplog):
    """A weights file in the Hugging Face cache is used offline; the new 2-class head stays fresh."""
    import huggingface_hub.constants

    reference = timm.create_model("efficientnet_b0").state_dict()
    hub_id = timm.models.get_pretrained_cfg("efficientnet_b0").hf_hub_id
    repo = tmp_path / "hf" / f"models--{hub_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file(reference, repo / "snapshots" / ("0" * 40) / "model.safetensors")
    assert huggingface_hub.constants.HF_HUB_CACHE == str(tmp_path / "hf")

    with caplog.at_level(logging.INFO, logger="deepfake.models"):
        model = build_model("efficientnet_b0", pretrained=True, width=0.5)
    loaded = model.backbone.state_dict()
    assert model.pretrained_loaded is True and model.width == 1.0  # the weights exist at full width only
    assert "full width, not 0.5" in caplog.text
    assert torch.equal(loaded["blocks.3.0.conv_pw.weight"], reference["blocks.3.0.conv_pw.weight"])
    assert loaded["classifier.weight"].shape == (2, 1280)
    assert "classifier.weight" in caplog.text  # reported as kept fresh


def test_spectrum_head_round_trips_and_passes_input_gradients(images, tmp_path):
    model = build_model("resnet_se", spectrum=True)
    with torch.no_grad():
        model.train()(images)
    model.eval()
    path = tmp_path / "spectrum.pt"
    save_checkpoint(path, model, config={}, phase="base")
    restored = load_checkpoint(path)
    assert restored.spectrum is not None
    x = images.clone().requires_grad_(True)
    logits = restored(x)
    (gradient,) = torch.autograd.grad(logits[:, 1].sum(), x)
    assert torch.equal(logits.detach(), model(images).detach()) and gradient.abs().sum() > 0
    assert build_model("resnet_se").spectrum is None
    with torch.no_grad():
        assert restored(torch.rand(2, 3, 48, 48)).shape == (2, 2)  # other sizes are pooled to the 32x32 grid


def test_spectrum_features_expose_a_faint_periodic_trace_that_pixel_statistics_hide():
    """A +-6-grey-level period-2 pattern (an upsampling-style trace) on noise of +-100 grey levels leaves
    mean and spread as they were, but raises the Nyquist bin of nearly every image and no other (non-DC) bin."""
    from deepfake.models import SpectrumHead

    clean = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    checker = ((torch.arange(32).view(-1, 1) + torch.arange(32)) % 2).float() * 12 / 255 - 6 / 255
    marked = clean + checker
    assert abs(marked.mean() - clean.mean()) < 1e-3 and abs(marked.std() - clean.std()) < 2e-3
    change = SpectrumHead.log_spectrum(marked) - SpectrumHead.log_spectrum(clean)
    assert (change[..., 16, 16] > 0).float().mean() > 0.95
    change[..., 16, 16] = change[..., 0, 0] = 0  # the DC bin is ~0 once the mean is removed
    assert change.abs().max() < 1e-3
    assert SpectrumHead.log_spectrum(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 17)


def test_weights_dir_file_is_loaded_through_timm_before_any_hub(tmp_path, caplog):
    """A <timm name>.safetensors in the weights folder is what the model starts from; the head stays new."""
    reference = timm.create_model("test_efficientnet").state_dict()
    save_file(reference, tmp_path / "test_efficientnet.safetensors")
    with caplog.at_level(logging.INFO, logger="deepfake.models"):
        model = build_model("test_efficientnet", pretrained=True, input_size=64, weights_dir=tmp_path)
    loaded = model.backbone.state_dict()
    assert model.pretrained_loaded is True and f"from {tmp_path / 'test_efficientnet.safetensors'}" in caplog.text
    assert all(torch.equal(loaded[k], v) for k, v in reference.items() if not k.startswith("classifier"))
    assert loaded["classifier.weight"].shape == (2, reference["classifier.weight"].shape[1])
    cfg = timm.models.get_pretrained_cfg("test_efficientnet")
    assert torch.allclose(model.normalize.mean.flatten(), torch.tensor(cfg.mean))  # the weights' own normalisation


def test_missing_weights_stop_a_run_that_requires_them_naming_the_file_and_both_fixes(tmp_path):
    from deepfake.errors import ConfigError
    from deepfake.pretrained import require_weights

    with pytest.raises(ConfigError) as error:
        require_weights({"tf_efficientnet_lite0": "tf_efficientnet_lite0"}, tmp_path)
    message = str(error.value)
    assert f"{tmp_path / 'tf_efficientnet_lite0'}{{.safetensors,.pth,.bin}}" in message
    assert "--weights-dir" in message and "Hugging Face hub" in message and "\n" not in message
    (tmp_path / "tf_efficientnet_lite0.pth").write_bytes(b"")
    require_weights({"tf_efficientnet_lite0": "tf_efficientnet_lite0"}, tmp_path)  # found: no error


def test_up_scaling_model_is_attacked_within_the_budget_of_the_original_pixels(images):
    from deepfake.attacks import pgd

    model = build_model("test_efficientnet", input_size=64).eval()
    seen = []
    model.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[-1]))
    eps = 4 / 255
    adversarial = pgd(model, images, torch.tensor([0, 1, 0]), eps, steps=3, step_size=eps / 2)
    assert adversarial.shape == images.shape and seen[-1] == 64
    assert (adversarial - images).abs().max() <= eps + 1e-6 and (adversarial - images).abs().max() > eps / 4
    assert adversarial.min() >= 0 and adversarial.max() <= 1


def test_checkpoint_keeps_a_timm_member_and_its_input_size(images, tmp_path):
    model = build_model("test_efficientnet", input_size=48).eval()
    save_checkpoint(tmp_path / "m.pt", model, config={}, phase="base")
    restored = load_checkpoint(tmp_path / "m.pt")
    assert restored.arch == "test_efficientnet" and restored.input_size == 48
    with torch.no_grad():
        assert torch.equal(restored(images), model(images))
