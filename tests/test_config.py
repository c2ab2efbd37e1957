import argparse
import json
import re
from dataclasses import fields

import pytest

from deepfake.cli import add_config_arguments, config_from_args
from deepfake.config import MODEL_NAMES, PRESETS, TRAINING_KEYS, Config, config_from_dict, make_config
from deepfake.errors import ConfigError


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_full_is_default_and_holds_reference_recipe():
    config = parse()
    assert config.preset == "full"
    assert (config.batch_size, config.lr, config.weight_decay) == (128, 5e-4, 1e-4)
    assert config.adv_ratio == 0.3 and config.val_fraction == 0.2 and config.seed == 42


def test_seed_preset_keeps_original_recipe():
    seed = make_config("seed")
    assert (seed.base_epochs, seed.patience, seed.finetune_epochs, seed.finetune_lr) == (50, 15, 15, 1e-4)
    assert seed.fgsm_epsilons == (0.02, 0.03, 0.05, 0.08)
    assert (seed.augment_per_class, seed.adversarial_count) == (250, 400)
    assert all(seed.width(name) == 1.0 for name in MODEL_NAMES)  # the seed notebook's full-size models


def test_model_width_names_a_multiplier_per_model_and_full_width_otherwise():
    config = parse("--set", "model_width=[['convnext_tiny', 0.5]]")
    assert (config.width("convnext_tiny"), config.width("resnet_se")) == (0.5, 1.0)


def test_flags_override_preset():
    config = parse("--preset", "quick", "--models", "resnet_se,efficientnet_b0", "--epochs", "3",
                   "--batch-size", "16", "--seed", "7", "--no-pretrained", "--device", "cpu")
    assert config.models == ("resnet_se", "efficientnet_b0")
    assert (config.base_epochs, config.batch_size, config.seed) == (3, 16, 7)
    assert config.pretrained is False and config.device == "cpu"
    assert config.finetune_epochs == PRESETS["quick"]["finetune_epochs"]


def test_unknown_names_fail_with_the_choices():
    with pytest.raises(ConfigError, match="resnet_se or a timm model name"):
        make_config("quick", models=("resnet_fifty",))
    assert make_config("quick", models=("resnet50", "resnet_se")).models == ("resnet50", "resnet_se")  # timm's
    with pytest.raises(ConfigError, match="quick"):
        make_config("nope")
    with pytest.raises(ConfigError, match="epochz"):
        make_config("full", epochz=3)
    with pytest.raises(ConfigError, match="heavy; choose from lossless, seed"):
        make_config("full", augmentation="heavy")
    with pytest.raises(ConfigError, match="effnet; choose from"):
        make_config("full", model_lr=(("effnet", 1e-3),))
    with pytest.raises(ConfigError, match="resnet; choose from"):
        make_config("full", spectrum_models=("resnet",))
    with pytest.raises(ConfigError, match="convnext; choose from"):
        make_config("full", model_width=(("convnext", 0.5),))
    with pytest.raises(ConfigError, match="resnet; choose from"):
        make_config("full", model_corruption_prob=(("resnet", 0.0),))
    with pytest.raises(ConfigError, match=r"model_corruption_prob resnet_se=1.5 \(in \[0, 1\]\)"):
        make_config("full", model_corruption_prob=(("resnet_se", 1.5),))
    with pytest.raises(ConfigError, match="unknown model in bf16_crafting: resnet; choose from"):
        make_config("full", bf16_crafting=("resnet",))
    with pytest.raises(ConfigError, match=r"bf16_crafting takes a tuple like \(1, 2\), got True"):
        make_config("full", bf16_crafting=True)  # a bool before it became a per-model list
    with pytest.raises(ConfigError, match="bf16_crafting names efficientnet_b0, not in bf16_models"):
        make_config("full", bf16_crafting=("efficientnet_b0",))
    with pytest.raises(ConfigError, match="bf16_crafting names resnet_se, not in bf16_models"):
        make_config("full", bf16_models=())  # full crafts in bf16 for ResNet-SE: turning bf16 off must say both
    assert make_config("full", bf16_models=(), bf16_crafting=()).bf16_crafting == ()
    with pytest.raises(ConfigError, match="multipliers must be positive, got resnet_se=0"):
        make_config("full", model_width=(("resnet_se", 0),))
    with pytest.raises(ConfigError, match="f1; choose from accuracy, auc"):
        make_config("full", select_metric="f1")


def test_dict_round_trip_and_fingerprint():
    config = make_config("quick", seed=3, model_lr=(("efficientnet_b0", 1e-3),))
    again = config_from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert again.fingerprint(("seed", "lr")) == config.fingerprint(("seed", "lr"))
    assert make_config("quick", seed=4).fingerprint(("seed",)) != config.fingerprint(("seed",))


# Fields that change where outputs go, what is evaluated or how fast: never what a trained model is.
NOT_TRAINING = {"preset", "data_dir", "generated_dir", "checkpoint_dir", "viz_dir", "models", "device", "threads",
                "eval_epsilons", "pgd_steps", "corruption_severities", "gradcam_images", "eval_batch_size", "tta_flip",
                "require_pretrained", "eval_max_images",
                "labels",  # the labels themselves are in the split's data id, which every checkpoint carries
                "folds"}  # so is each fold's training part, and each fold has its own checkpoint folder


def test_every_field_is_either_a_training_key_or_known_not_to_change_a_model():
    """A field missing from TRAINING_KEYS would let a rerun reuse checkpoints trained with another value."""
    names = {f.name for f in fields(Config)}
    assert set(TRAINING_KEYS) | NOT_TRAINING == names and not set(TRAINING_KEYS) & NOT_TRAINING


def test_set_overrides_any_field_with_its_type():
    config = parse("--preset", "quick", "--set", "finetune_anchor=2", "fgsm_epsilons=(0.01, 0.03)", "augmentation=seed",
                   "model_lr=[['resnet_se', 1e-3]]")
    assert config.finetune_anchor == 2.0 and isinstance(config.finetune_anchor, float)
    assert config.fgsm_epsilons == (0.01, 0.03) and config.augmentation == "seed"
    assert config.model_lr == (("resnet_se", 1e-3),)


@pytest.mark.parametrize("argv,message", [
    (["--set", "base_epochs=2.5"], "base_epochs takes an integer, got 2.5"),
    (["--set", "fgsm_epsilons=(2/255,)"], "fgsm_epsilons takes a tuple"),
    (["--set", "finetune_anchor"], "--set expects FIELD=VALUE"),
    (["--set", "epochz=3"], "unknown config field"),
    (["--set", "base_epoch=3"], "unknown config field(s): base_epoch (did you mean base_epochs?)"),
    (["--epochs", "3", "--set", "base_epochs=4"], "base_epochs set both by a flag and by --set"),
    (["--set", "preset=quick"], "choose it with --preset"),
    (["--models", "resnet_se,resnet_se"], "names a model twice"),
    (["--finetune-epochs", "0"], "out of range: finetune_epochs=0 (at least 1)"),
    (["--batch-size", "0", "--set", "val_fraction=0"], "batch_size=0 (at least 1); val_fraction=0"),
    (["--set", "adv_ratio=1.3", "label_smoothing=1.0", "lr=-1e-3"], "lr=-0.001 (not negative); adv_ratio=1.3 "
                                                                     "(in [0, 1]); label_smoothing=1.0 (in [0, 1))"),
    (["--set", "fgsm_epsilons=(8,)"], "fgsm_epsilons has 8 (budgets are pixel units in [0, 1])"),
    (["--preset", "quick", "--set", "average_epochs=7"], "average_epochs=7 (at most base_epochs=6)"),
])
def test_bad_set_fails_with_one_clear_line(argv, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse(*argv)


def test_a_run_without_preset_is_told_which_it_gets_and_what_it_costs():
    from deepfake.cli import default_preset_notice

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    notice = default_preset_notice(parser.parse_args([]))
    assert notice.startswith("no --preset given: running full") and "--preset quick takes about 3-5 min" in notice
    assert default_preset_notice(parser.parse_args(["--preset", "full"])) is None
    assert config_from_args(parser.parse_args([])).preset == "full"
