import argparse
import json
import re
from dataclasses import fields

import pytest

from deepfake.cli import add_config_arguments, config_from_args
from deepfake.config import (MODEL_NAMES, PHASE2_FIELDS, PRESETS, SHARED_TRAINING_KEYS, Config, Recipe,
                             config_from_dict, make_config)
from deepfake.errors import ConfigError


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_full_is_default_and_holds_reference_recipe():
    config = parse()
    assert config.preset == "full"
    assert (config.batch_size, config.recipe.lr, config.recipe.weight_decay) == (128, 5e-4, 1e-4)
    assert config.recipe.adv_ratio == 0.3 and config.val_fraction == 0.2 and config.seed == 42
    assert (config.member("convnext_tiny").lr, config.member("convnext_tiny").width) == (1.5e-3, 0.5)
    assert config.member("resnet_se").bf16_crafting and not config.member("efficientnet_b0").bf16


def test_seed_preset_keeps_original_recipe():
    seed = make_config("seed")
    assert seed.members == {} and all(seed.member(name) == Recipe() for name in MODEL_NAMES)
    recipe = seed.recipe
    assert (recipe.base_epochs, recipe.patience, recipe.finetune_epochs, recipe.finetune_lr) == (50, 15, 15, 1e-4)
    assert recipe.fgsm_epsilons == (0.02, 0.03, 0.05, 0.08) and recipe.width == 1.0  # full-size models
    assert (seed.augment_per_class, seed.adversarial_count) == (250, 400)


def test_a_field_set_for_every_member_replaces_the_presets_per_member_values_and_a_named_one_sets_one():
    config = parse("--set", "lr=1e-3", "resnet_se.lr=2e-3", "convnext_tiny.width=0.25", "efficientnet_b0.bf16=True")
    assert [config.member(name).lr for name in MODEL_NAMES] == [1e-3, 1e-3, 2e-3]
    assert [config.member(name).width for name in MODEL_NAMES] == [0.25, 0.5, 1.0]
    assert config.member("efficientnet_b0").bf16 and config.member("convnext_tiny").spectrum  # the preset's, kept
    assert config.member("tf_efficientnet_lite0") == config.recipe  # a member the preset does not name
    pretrained = make_config("pretrained")
    assert pretrained.member("tf_efficientnet_lite0").pretrained and not pretrained.member("resnet_se").pretrained
    lite0, resnet = pretrained.member("tf_efficientnet_lite0"), pretrained.member("resnet_se")
    assert resnet.corruption_prob == 0 < lite0.corruption_prob


def test_flags_override_preset():
    config = parse("--preset", "quick", "--models", "resnet_se,efficientnet_b0", "--epochs", "3",
                   "--batch-size", "16", "--seed", "7", "--no-pretrained", "--device", "cpu")
    assert config.models == ("resnet_se", "efficientnet_b0")
    assert (config.recipe.base_epochs, config.batch_size, config.seed) == (3, 16, 7)
    assert config.recipe.pretrained is False and config.device == "cpu"
    assert config.recipe.finetune_epochs == PRESETS["quick"]["finetune_epochs"]


def test_unknown_names_fail_with_the_choices():
    with pytest.raises(ConfigError, match="resnet_se or a timm model name"):
        make_config("quick", models=("resnet_fifty",))
    assert make_config("quick", models=("resnet50", "resnet_se")).models == ("resnet50", "resnet_se")  # timm's
    with pytest.raises(ConfigError, match="quick"):
        make_config("nope")
    with pytest.raises(ConfigError, match="epochz"):
        make_config("full", epochz=3)
    with pytest.raises(ConfigError, match=re.escape("augmentation=heavy (choose from lossless, seed)")):
        make_config("full", augmentation="heavy")
    with pytest.raises(ConfigError, match="unknown model effnet; choose from"):
        make_config("full", **{"effnet.lr": 1e-3})
    with pytest.raises(ConfigError, match=re.escape("resnet_se.corruption_prob=1.5 (in [0, 1])")):
        make_config("full", **{"resnet_se.corruption_prob": 1.5})
    with pytest.raises(ConfigError, match="resnet_se.seed: seed is shared by every member; set it with --set seed="):
        make_config("full", **{"resnet_se.seed": 3})
    with pytest.raises(ConfigError, match="unknown config field.*lrr"):
        make_config("full", **{"resnet_se.lrr": 1e-3})
    with pytest.raises(ConfigError, match="efficientnet_b0.bf16_crafting=True needs efficientnet_b0.bf16=True"):
        make_config("full", **{"efficientnet_b0.bf16_crafting": True})
    with pytest.raises(ConfigError, match="resnet_se.bf16_crafting=True needs resnet_se.bf16=True"):
        make_config("full", **{"resnet_se.bf16": False})  # full crafts in bf16 for ResNet-SE: must say both
    assert not make_config("full", bf16=False, bf16_crafting=False).member("resnet_se").bf16_crafting
    with pytest.raises(ConfigError, match=re.escape("resnet_se.width=0.0 (positive)")):
        make_config("full", **{"resnet_se.width": 0})
    with pytest.raises(ConfigError, match="members is not a field to set"):
        make_config("full", members={})
    with pytest.raises(ConfigError, match=re.escape("select_metric=f1 (choose from accuracy, auc)")):
        make_config("full", select_metric="f1")


def test_dict_round_trip_and_fingerprint():
    config = make_config("quick", seed=3, **{"efficientnet_b0.lr": 1e-3})
    again = config_from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert again.member_fingerprint("efficientnet_b0", "final") == config.member_fingerprint("efficientnet_b0", "final")
    assert make_config("quick", seed=4).fingerprint(("seed",)) != config.fingerprint(("seed",))


def test_a_config_saved_before_member_recipes_is_read_as_shared_values_and_member_recipes():
    flat = {"preset": "full", "seed": 5, "lr": 5e-4, "base_epochs": 30, "fgsm_epsilons": [0.01, 0.02],
            "model_lr": [["convnext_tiny", 1.5e-3]], "model_width": [["convnext_tiny", 0.5]],
            "model_corruption_prob": [["resnet_se", 0.0]], "corruption_prob": 0.5, "spectrum_models": ["convnext_tiny"],
            "bf16_models": ["resnet_se"], "bf16_crafting": ["resnet_se"], "backbone_lr_scale": 1.0, "tta_flip": False}
    config = config_from_dict(flat)
    assert (config.seed, config.recipe.base_epochs, config.recipe.fgsm_epsilons) == (5, 30, (0.01, 0.02))
    convnext, resnet = config.member("convnext_tiny"), config.member("resnet_se")
    assert (convnext.lr, convnext.width, convnext.spectrum, convnext.corruption_prob) == (1.5e-3, 0.5, True, 0.5)
    assert (resnet.lr, resnet.bf16, resnet.bf16_crafting, resnet.corruption_prob) == (5e-4, True, True, 0.0)


# Fields that change where outputs go, what is evaluated or how fast, or that reach a model through the data id
# or the adversarial pool's fingerprint (which every final checkpoint carries)
NOT_TRAINING = {"preset", "data_dir", "generated_dir", "checkpoint_dir", "viz_dir", "models", "device", "threads",
                "eval_epsilons", "pgd_steps", "corruption_severities", "gradcam_images", "eval_batch_size", "tta_flip",
                "require_pretrained", "eval_max_images", "recipe", "members",
                "weights_dir",  # in a pretrained member's fingerprint (below)
                "adversarial_count",  # the pool's
                "labels",  # the labels themselves are in the split's data id, which every checkpoint carries
                "folds"}  # so is each fold's training part, and each fold has its own checkpoint folder


def test_every_shared_field_is_either_a_training_key_or_known_not_to_change_a_model():
    """A field missing from SHARED_TRAINING_KEYS would let a rerun reuse checkpoints trained with another value."""
    names = {f.name for f in fields(Config)}
    assert set(SHARED_TRAINING_KEYS) | NOT_TRAINING == names and not set(SHARED_TRAINING_KEYS) & NOT_TRAINING


def test_each_recipe_field_moves_its_own_members_fingerprint_alone_and_phase_2_fields_only_the_final_one():
    base = make_config("full", **{"resnet_se.average_epochs": 0})
    changed = {"pretrained": True, "spectrum": True, "width": 0.75, "input_size": 48, "bf16": False,
               "bf16_crafting": False, "lr": 1e-3, "weight_decay": 0.0, "base_epochs": 31, "pretrained_epochs": 3,
               "patience": 3, "select_metric": "auc", "average_epochs": 5, "warmup_epochs": 2, "label_smoothing": 0.2,
               "corruption_prob": 0.3, "finetune_epochs": 3, "finetune_lr": 1e-3, "adv_ratio": 0.5,
               "fgsm_epsilons": (0.01,), "fgsm_random_start": False, "finetune_attack_steps": 1, "finetune_anchor": 0.5}
    assert set(changed) == {f.name for f in fields(Recipe)}
    for name, value in changed.items():
        other = make_config("full", **{"resnet_se.average_epochs": 0, f"resnet_se.{name}": value,
                                       **({"resnet_se.bf16_crafting": False} if name == "bf16" else {})})
        assert other.member("resnet_se") != base.member("resnet_se")
        for phase in ("base", "final"):
            moved = other.member_fingerprint("resnet_se", phase) != base.member_fingerprint("resnet_se", phase)
            assert moved == (phase == "final" or name not in PHASE2_FIELDS), (name, phase)
            assert other.member_fingerprint("convnext_tiny", phase) == base.member_fingerprint("convnext_tiny", phase)
    averaged = make_config("full")  # patience stops nothing while the last epochs are averaged
    assert (make_config("full", patience=3).member_fingerprint("resnet_se", "base")
            == averaged.member_fingerprint("resnet_se", "base"))
    assert (make_config("full", weights_dir="w").member_fingerprint("resnet_se", "base")
            == averaged.member_fingerprint("resnet_se", "base"))  # weights only reach a pretrained member
    assert (make_config("full", seed=1).member_fingerprint("resnet_se", "base")
            != averaged.member_fingerprint("resnet_se", "base"))


def test_set_overrides_any_field_with_its_type():
    config = parse("--preset", "quick", "--set", "finetune_anchor=2", "fgsm_epsilons=(0.01, 0.03)", "augmentation=seed",
                   "resnet_se.lr=1")
    assert config.recipe.finetune_anchor == 2.0 and isinstance(config.recipe.finetune_anchor, float)
    assert config.recipe.fgsm_epsilons == (0.01, 0.03) and config.augmentation == "seed"
    assert config.member("resnet_se").lr == 1.0 and isinstance(config.member("resnet_se").lr, float)


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
    (["--set", "resnet_se.lr=-1"], "resnet_se.lr=-1.0 (not negative)"),
])
def test_bad_set_fails_with_one_clear_line(argv, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse(*argv)


def test_a_shorter_full_run_averages_what_epochs_it_has():
    from deepfake.train import base_settings

    config = parse("--set", "base_epochs=5")
    assert (base_settings(config, "resnet_se").epochs, base_settings(config, "resnet_se").average_epochs) == (5, 5)
    assert base_settings(make_config("full"), "resnet_se").average_epochs == 10


def test_a_run_without_preset_is_told_which_it_gets_and_what_it_costs():
    from deepfake.cli import default_preset_notice

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    notice = default_preset_notice(parser.parse_args([]))
    assert notice.startswith("no --preset given: running full") and "--preset quick takes about 3-5 min" in notice
    assert default_preset_notice(parser.parse_args(["--preset", "full"])) is None
    assert config_from_args(parser.parse_args([])).preset == "full"
