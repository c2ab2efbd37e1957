"""The training loop: adversarial fine-tuning must buy robustness; divergence must stop cleanly."""
import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from deepfake import precision as precision_module
from deepfake import train as train_module
from deepfake.attacks import fgsm
from deepfake.config import make_config
from deepfake.data import load_labelled, split_indices
from deepfake.demo_data import build_demo_dataset
from deepfake.inference import as_nchw_uint8, count_correct, to_float
from deepfake.train import (NonFiniteLossError, _adversarial, _batch_loss, _frozen_copy, base_settings,
                            finetune_settings, train_phase)

CPU = torch.device("cpu")


def toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2),
    )


@pytest.fixture(scope="module")
def toy_split(tmp_path_factory):
    data = load_labelled(build_demo_dataset(tmp_path_factory.mktemp("toy"), per_class=150, test_count=1, seed=0))
    train, val = split_indices(data.labels, 0.3, seed=0)
    return data.subset(train), data.subset(val)


def fgsm_accuracy(model: nn.Module, images, labels, eps: float) -> float:
    x, y = to_float(as_nchw_uint8(images), CPU), torch.from_numpy(labels)
    return count_correct(model.eval(), fgsm(model, x, y, eps), y) / len(y)


def test_adversarial_finetune_raises_accuracy_under_fgsm(toy_split):
    train, val = toy_split
    config = make_config("tiny", batch_size=32, base_epochs=15, patience=15, finetune_epochs=8, lr=3e-3,
                         finetune_lr=1e-3, max_steps_per_epoch=0, fgsm_epsilons=(0.03,))
    model = toy_model()
    base = train_phase(model, train, val, config, base_settings(config), CPU, "toy")
    before = fgsm_accuracy(model, val.images, val.labels, 0.03)
    final = train_phase(model, train, val, config, finetune_settings(config), CPU, "toy")
    after = fgsm_accuracy(model, val.images, val.labels, 0.03)
    assert base.val_metrics["accuracy"] > 0.7, "the toy model must learn the task before the comparison means anything"
    assert after > before + 0.1, f"FGSM accuracy {before:.3f} -> {after:.3f}"
    assert len(base.history) <= 15 and len(final.history) == 8
    assert final.best_epoch == 8, "phase 2 keeps its last weights"


def linear_model() -> nn.Module:
    """No batch norm: with a zero learning rate its predictions never change."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))


def test_learning_rate_follows_the_cosine_down_to_a_hundredth_of_the_peak(toy_split):
    train, val = toy_split
    config = make_config("tiny", batch_size=32, base_epochs=5, patience=5, warmup_epochs=1, lr=1e-3,
                         max_steps_per_epoch=0)
    lrs = [row["lr"] for row in train_phase(linear_model(), train, val, config, base_settings(config), CPU).history]
    assert 0.5e-3 < lrs[0] < 1e-3, "after the warmup epoch the rate is near its peak"
    assert all(later < earlier for earlier, later in zip(lrs, lrs[1:]))
    assert lrs[-1] == pytest.approx(1e-5)


def test_base_phase_stops_after_patience_epochs_without_a_better_score(toy_split, capsys):
    train, val = toy_split
    config = make_config("tiny", batch_size=32, base_epochs=30, patience=2, lr=0.0, max_steps_per_epoch=0)
    result = train_phase(linear_model(), train, val, config, base_settings(config), CPU)
    assert (len(result.history), result.best_epoch) == (3, 1)
    assert "early stop, no better val accuracy for 2 epochs" in capsys.readouterr().out


def test_diverging_loss_stops_with_a_clear_message(toy_split):
    train, val = toy_split
    config = make_config("tiny", lr=1e12, batch_size=32, base_epochs=3, max_steps_per_epoch=5)
    with pytest.raises(NonFiniteLossError, match="lower the learning rate"):
        train_phase(toy_model(), train, val, config, base_settings(config), CPU, "toy")


@pytest.mark.parametrize("metric,columns", [("accuracy", ("val_acc", "val_auc")), ("auc", ("val_auc", "val_acc"))])
def test_base_phase_keeps_the_epoch_best_on_the_chosen_metric(toy_split, metric, columns):
    train, val = toy_split
    config = make_config("tiny", batch_size=32, base_epochs=6, patience=6, lr=3e-3, max_steps_per_epoch=3,
                         select_metric=metric)
    model = toy_model()
    result = train_phase(model, train, val, config, base_settings(config), CPU, "toy")
    scores = [tuple(row[column] for column in columns) for row in result.history]  # ties break on the other
    assert result.best_epoch == scores.index(max(scores)) + 1
    with torch.no_grad():
        kept = (model.eval()(to_float(as_nchw_uint8(val.images), CPU)).argmax(1).numpy() == val.labels).mean()
    assert kept == pytest.approx(result.history[result.best_epoch - 1]["val_acc"])


def test_a_members_learning_rates_replace_the_shared_ones_for_that_member_only():
    config = make_config("tiny", lr=5e-4, **{"efficientnet_b0.lr": 2e-3, "resnet_se.finetune_lr": 3e-4})
    assert base_settings(config, "efficientnet_b0").lr == 2e-3
    assert base_settings(config, "resnet_se").lr == base_settings(config).lr == 5e-4
    assert finetune_settings(config, "resnet_se").lr == 3e-4
    assert finetune_settings(config, "efficientnet_b0").lr == finetune_settings(config).lr == config.recipe.finetune_lr


def test_a_members_corruption_share_replaces_the_shared_one_in_both_phases():
    config = make_config("tiny", corruption_prob=0.5, **{"resnet_se.corruption_prob": 0.0})
    for settings in (base_settings, finetune_settings):
        assert settings(config, "resnet_se").recipe.corruption_prob == 0.0
        assert (settings(config, "tf_efficientnet_lite0").recipe.corruption_prob
                == settings(config).recipe.corruption_prob == 0.5)
    assert base_settings(config, "tf_efficientnet_lite0", pretrained=True).recipe.corruption_prob == 0.5


@pytest.mark.parametrize("steps", [1, 3])
def test_adversarial_images_stay_within_the_budget(toy_split, steps):
    train, _ = toy_split
    config = make_config("tiny", fgsm_epsilons=(4 / 255,), fgsm_random_start=True, finetune_attack_steps=steps)
    x, y = to_float(as_nchw_uint8(train.images[:10]), CPU), torch.from_numpy(train.labels[:10])
    adversarial = _adversarial(toy_model(), x, y, config.recipe, torch.Generator().manual_seed(0))
    change = (adversarial - x).abs()
    assert adversarial.shape == x.shape and change.max() <= 4 / 255 + 1e-6 and change.mean() > 1 / 255
    assert adversarial.min() >= 0 and adversarial.max() <= 1


def test_batch_loss_crafts_only_its_share(toy_split):
    train, _ = toy_split
    x, y = to_float(as_nchw_uint8(train.images[:10]), CPU), torch.from_numpy(train.labels[:10])
    model = toy_model().eval()
    with torch.no_grad():
        clean_logits = model(x)
    losses = {}
    for eps in (0.0, 8 / 255):
        config = make_config("tiny", fgsm_epsilons=(eps,), finetune_attack_steps=3, label_smoothing=0.0)
        loss, logits = _batch_loss(model, x, y, finetune_settings(config), torch.Generator().manual_seed(0))
        losses[eps] = loss.item()
        assert logits.shape == (10, 2) and torch.allclose(logits[-7:], clean_logits[-7:], atol=1e-6)
    assert not torch.allclose(logits[:3], clean_logits[:3]), "the first 30% of the batch must be attacked"
    assert losses[0.0] == pytest.approx(nn.functional.cross_entropy(clean_logits, y).item(), abs=1e-5), \
        "a zero budget leaves the clean loss"
    assert losses[8 / 255] > losses[0.0], "the adversarial share must cost loss"


def test_pgd_share_is_a_stronger_attack_than_the_fgsm_share(toy_split):
    train, val = toy_split
    config = make_config("tiny", batch_size=32, base_epochs=10, patience=10, lr=3e-3, max_steps_per_epoch=0,
                         fgsm_epsilons=(8 / 255,), fgsm_random_start=True)
    model = toy_model()
    train_phase(model, train, val, config, base_settings(config), CPU, "toy")
    x, y = to_float(as_nchw_uint8(val.images), CPU), torch.from_numpy(val.labels)
    losses = {}
    for steps in (1, 5):
        share = _adversarial(model, x, y, replace(config.recipe, finetune_attack_steps=steps),
                             torch.Generator().manual_seed(0))
        with torch.no_grad():
            losses[steps] = nn.functional.cross_entropy(model.eval()(share), y).item()
    assert losses[5] > losses[1], losses


@pytest.mark.parametrize("bf16_crafting", [False, True])
@pytest.mark.parametrize("fast", [True, False])
def test_bf16_recipes_train_under_bfloat16_autocast_only_where_it_is_fast(toy_split, monkeypatch, fast, bf16_crafting):
    config = make_config("tiny", precision="auto", max_steps_per_epoch=1, finetune_attack_steps=1,
                         **{"resnet_se.bf16_crafting": bf16_crafting})
    assert base_settings(config, "resnet_se").recipe.bf16 and finetune_settings(config, "resnet_se").recipe.bf16
    assert not base_settings(config, "efficientnet_b0").recipe.bf16 and not finetune_settings(config).recipe.bf16
    assert finetune_settings(config, "resnet_se").bf16_crafting == bf16_crafting
    assert not finetune_settings(config, "convnext_tiny").bf16_crafting, "only the recipes that ask for it"
    assert not base_settings(config, "resnet_se").bf16_crafting, "phase 1 crafts nothing"
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: fast)
    model, seen = toy_model(), []
    model[0].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    predict = train_module.predict_fake_proba

    def validate(*args, **kwargs):
        seen.append("validation")
        return predict(*args, **kwargs)

    monkeypatch.setattr(train_module, "predict_fake_proba", validate)
    train, val = toy_split
    settings = replace(finetune_settings(config, "resnet_se"), epochs=1)
    result = train_phase(model, train, val, config, settings, CPU, "toy")
    assert result.precision == ("bfloat16" if fast else "float32")
    split = seen.index("validation")
    crafting, steps = seen[:split:2], seen[1:split:2]  # each step crafts its FGSM share, then trains
    assert set(steps) == {torch.bfloat16 if fast else torch.float32}
    assert set(seen[split + 1:]) == {torch.float32}, "validation runs in float32"
    assert set(crafting) == {torch.bfloat16 if fast and bf16_crafting else torch.float32}, \
        "the adversarial share is crafted in float32 unless bf16_crafting asks for the training step's precision"
    assert all(p.dtype == torch.float32 for p in model.parameters()), "autocast must leave the weights float32"


@pytest.mark.parametrize("bf16_crafting", [False, True])
def test_anchor_targets_are_float32_unless_bf16_crafting(toy_split, bf16_crafting):
    train, _ = toy_split
    x, y = to_float(as_nchw_uint8(train.images[:10]), CPU), torch.from_numpy(train.labels[:10])
    model = toy_model()
    anchor, seen = _frozen_copy(model), []
    anchor[0].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    config = make_config("tiny", fgsm_epsilons=(8 / 255,), finetune_anchor=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the bf16 training step the anchor sits in
        _batch_loss(model, x, y, finetune_settings(config), torch.Generator().manual_seed(0), anchor, bf16_crafting)
    assert seen == [torch.bfloat16 if bf16_crafting else torch.float32]


def _step_dtypes(model: nn.Module) -> dict[bool, list]:
    """The first layer's output dtypes in training mode (the steps) and in eval mode (crafting, validation)."""
    seen = {True: [], False: []}
    model[0].register_forward_hook(lambda module, inputs, output: seen[module.training].append(output.dtype))
    return seen


def test_float16_steps_go_through_the_gradient_scaler(toy_split, monkeypatch):
    train, val = toy_split
    config = make_config("tiny", precision="fp16", batch_size=32, max_steps_per_epoch=4, lr=3e-3,
                         finetune_attack_steps=1, **{"resnet_se.bf16_crafting": True})
    scalers = []
    make_scaler = precision_module.Precision.scaler
    monkeypatch.setattr(precision_module.Precision, "scaler",
                        lambda self, device: scalers.append(make_scaler(self, device)) or scalers[-1])
    model = toy_model()
    before = copy.deepcopy(model.state_dict())
    seen = _step_dtypes(model)
    settings = replace(finetune_settings(config, "resnet_se"), epochs=1)
    result = train_phase(model, train, val, config, settings, CPU, "toy")
    assert (result.precision, result.precision_why) == ("float16", "precision=fp16 asked for")
    assert seen[True] == [torch.float16] * 4
    assert set(seen[False]) == {torch.float32}, "float16 steps craft (bf16_crafting or not) and validate in float32"
    [scaler] = scalers
    assert scaler.is_enabled() and scaler._scale is not None, "every float16 loss is scaled before backward"
    assert scaler.get_scale() <= 2.0 ** 16, "the scale only ever backs off from its start"
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items()), "the steps moved the weights"


@pytest.mark.skipif(not precision_module.native_bf16(CPU), reason="this CPU has no native bfloat16")
def test_auto_trains_bf16_recipes_in_bfloat16_on_a_cpu_that_computes_it(toy_split):
    train, val = toy_split
    config = make_config("tiny", precision="auto", max_steps_per_epoch=2)
    for bf16_model, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        model = toy_model()
        seen = _step_dtypes(model)
        settings = replace(base_settings(config), epochs=1, recipe=replace(config.recipe, bf16=bf16_model))
        result = train_phase(model, train, val, config, settings, CPU, "toy")
        assert seen[True] == [dtype] * 2 and result.precision == str(dtype).removeprefix("torch.")


def test_anchor_term_is_zero_at_the_starting_weights(toy_split):
    train, _ = toy_split
    x, y = to_float(as_nchw_uint8(train.images[:10]), CPU), torch.from_numpy(train.labels[:10])
    model = toy_model().eval()
    settings = finetune_settings(make_config("tiny", fgsm_epsilons=(8 / 255,), finetune_attack_steps=3,
                                             finetune_anchor=5.0))
    plain, _ = _batch_loss(model, x, y, settings, torch.Generator().manual_seed(0))
    anchored, _ = _batch_loss(model, x, y, settings, torch.Generator().manual_seed(0), _frozen_copy(model))
    assert anchored.item() == pytest.approx(plain.item(), abs=1e-5)
    moved = toy_model().eval()
    with torch.no_grad():
        moved[-1].bias.add_(torch.tensor([1.0, -1.0]))
    drifted, _ = _batch_loss(moved, x, y, settings, torch.Generator().manual_seed(0), _frozen_copy(model))
    undrifted, _ = _batch_loss(moved, x, y, settings, torch.Generator().manual_seed(0))
    assert drifted.item() > undrifted.item() + 0.1, "moving away from the anchor's clean calls must cost loss"


def test_finetune_anchor_keeps_more_of_the_base_models_clean_calls(toy_split):
    train, val = toy_split
    config = make_config("tiny", batch_size=32, base_epochs=15, patience=15, finetune_epochs=6, lr=3e-3,
                         finetune_lr=3e-3, max_steps_per_epoch=0, fgsm_epsilons=(0.1,))
    base = toy_model()
    train_phase(base, train, val, config, base_settings(config), CPU, "toy")
    x = to_float(as_nchw_uint8(val.images), CPU)
    with torch.no_grad():
        base_calls = base.eval()(x).argmax(1)
    kept = {}
    for weight in (0.0, 5.0):
        anchored = make_config("tiny", batch_size=32, base_epochs=15, patience=15, finetune_epochs=6, lr=3e-3,
                               finetune_lr=3e-3, max_steps_per_epoch=0, fgsm_epsilons=(0.1,), finetune_anchor=weight)
        assert finetune_settings(anchored).anchor == weight and base_settings(anchored).anchor == 0
        model = copy.deepcopy(base)
        train_phase(model, train, val, anchored, finetune_settings(anchored), CPU, "toy")
        with torch.no_grad():
            kept[weight] = (model.eval()(x).argmax(1) == base_calls).float().mean().item()
    assert kept[5.0] > kept[0.0] + 0.05, f"share of the base model's calls kept: {kept}"


def test_average_epochs_keeps_the_mean_of_the_last_epochs_and_never_stops_early(toy_split):
    train, val = toy_split
    config = make_config("tiny", batch_size=32, base_epochs=4, patience=1, lr=3e-3, max_steps_per_epoch=3,
                         average_epochs=2)
    snapshots = {}
    model = linear_model()
    result = train_phase(model, train, val, config, base_settings(config), CPU,
                         on_epoch=lambda epoch, m, _: snapshots.update({epoch: copy.deepcopy(m.state_dict())}))
    assert len(result.history) == 4, "patience does not apply when the last epochs are averaged"
    assert (result.best_epoch, result.averaged_epochs) == (4, 2)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, (snapshots[3][name] + snapshots[4][name]) / 2)
    with torch.no_grad():
        calls = model.eval()(to_float(as_nchw_uint8(val.images), CPU)).argmax(1).numpy()
    assert (calls == val.labels).mean() == pytest.approx(result.val_metrics["accuracy"])


def test_averaged_weights_get_batch_norm_statistics_of_their_own(toy_split):
    train, val = toy_split
    batches = 3  # equal batches, so the per-batch running mean is the mean over all training images
    config = make_config("tiny", batch_size=32, base_epochs=2, lr=3e-3, max_steps_per_epoch=3, average_epochs=2,
                         eval_batch_size=len(train) // batches)
    train = train.subset(np.arange(batches * config.eval_batch_size))
    model = toy_model()
    train_phase(model, train, val, config, base_settings(config), CPU)
    with torch.no_grad():
        first_conv = model[0](to_float(as_nchw_uint8(train.images), CPU))
    torch.testing.assert_close(model[1].running_mean, first_conv.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_a_pretrained_member_fine_tunes_briefly():
    config = make_config("full", pretrained_epochs=3)
    short = base_settings(config, "test_efficientnet", pretrained=True)
    assert (short.epochs, short.patience, short.average_epochs) == (3, None, 0)  # the last of 3 epochs is kept
    assert base_settings(config, "resnet_se").epochs == 30 and base_settings(config, "resnet_se").average_epochs == 10
