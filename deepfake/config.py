"""The run's configuration and each member's recipe, with named presets.

A :class:`Config` holds what every member shares (data, split, seed, device, generated samples,
evaluation); a :class:`Recipe` holds what is a member's own (architecture options, learning rates,
epochs, corruption share, precision, phase 2). A preset is shared values plus a few per-member ones,
as DeepfakeBench keeps one small config per detector over shared defaults. Each member is
fingerprinted by its own recipe and the shared training fields, so changing one member retrains it
alone. Every run saves the resolved config, and each member's recipe, next to its outputs.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field, fields

from .errors import ConfigError

MODEL_NAMES = ("convnext_tiny", "efficientnet_b0", "resnet_se")
AUGMENTATIONS = ("lossless", "seed")  # see data.train_transform and data.sample_transform
SELECT_METRICS = ("accuracy", "auc")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")  # of the training steps (deepfake/precision.py)
WEIGHT_SCHEMES = ("equal", "accuracy", "auc", "logodds")  # how ensemble.py weighs each model (deepfake.ensemble)
OPERATING_POINTS = ("balanced", "accurate", "robust")  # ensemble.py's default first (deepfake.frontier)


@dataclass(frozen=True)
class Recipe:
    """How one member is built and trained. Defaults are the seed notebook's recipe."""

    # The network
    pretrained: bool = False  # start from ImageNet weights (deepfake/pretrained.py); timm members only
    spectrum: bool = False  # add a Fourier-spectrum head (models.SpectrumHead)
    width: float = 1.0  # channel multiplier
    input_size: int = 0  # side a timm member sees, resized inside the model (models.Resize); 0 = image_size
    # precision=auto trains it under bfloat16 autocast on a CPU that computes it natively (else float32)
    bf16: bool = False
    # with bf16, phase 2 also crafts its adversarial share and anchor targets in bfloat16 (train._phase2_precision);
    # else, and in evaluation, attacks are float32
    bf16_crafting: bool = False
    # Phase 1: base training
    lr: float = 5e-4  # AdamW, peak of the cosine schedule
    weight_decay: float = 1e-4
    base_epochs: int = 50
    pretrained_epochs: int = 0  # phase-1 epochs when it loaded ImageNet weights (0: base_epochs); last kept
    patience: int = 15  # epochs without a better validation select_metric
    select_metric: str = "auc"  # auc | accuracy: picks the best base epoch (the other breaks ties)
    # > 0: phase 1 keeps the mean of its last N epochs' weights (all of them when fewer; batch-norm statistics
    # recomputed on the training images) instead of its best epoch, and runs every epoch (no early stopping)
    average_epochs: int = 0
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    corruption_prob: float = 0.0  # share of training images given a blur, JPEG or noise (data.training_corruption)
    # Phase 2: adversarial fine-tuning
    finetune_epochs: int = 15
    finetune_lr: float = 1e-4
    adv_ratio: float = 0.3  # share of each fine-tune batch that is adversarial
    # pixel units in [0, 1]; the shared recipe's also budget the phase-2 pool (samples.adversarial_samples)
    fgsm_epsilons: tuple[float, ...] = (0.02, 0.03, 0.05, 0.08)
    fgsm_random_start: bool = False  # "Fast is better than free" style start
    finetune_attack_steps: int = 1  # 1: FGSM crafts the adversarial share; k > 1: PGD-k (random start, step 2.5 eps/k)
    finetune_anchor: float = 0.0  # > 0: weight of KL(base model || model) on phase 2's clean share (train._batch_loss)


PHASE2_FIELDS = ("finetune_epochs", "finetune_lr", "adv_ratio", "fgsm_epsilons", "fgsm_random_start",
                 "finetune_attack_steps", "finetune_anchor", "bf16_crafting")
RECIPE_FIELDS = tuple(f.name for f in fields(Recipe))


@dataclass
class Config:
    """What every member shares, the shared recipe, and each member's departures from it."""

    preset: str = "full"
    # Paths
    data_dir: str = "data"
    labels: tuple[str, ...] = ()  # label files (a CSV, or the challenge's JSON pair) instead of folder names
    generated_dir: str = "data/generated"
    checkpoint_dir: str = "checkpoints"
    viz_dir: str = "visualizations"
    # Run
    models: tuple[str, ...] = MODEL_NAMES
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 42
    require_pretrained: bool = False  # a pretrained timm member without weights stops the run before training
    weights_dir: str = ""  # folder of <timm name>.safetensors/.pth/.bin files, tried before the hub
    threads: int = 0  # torch CPU threads; 0 = all cores
    # auto: bfloat16 autocast on GPUs that compute it natively, float16 with a gradient scaler on older ones, and
    # on a CPU bfloat16 for members whose recipe says bf16 where it is native, else float32; fp32 | fp16 | bf16: that
    precision: str = "auto"
    # Data
    image_size: int = 32  # pixels; other sizes are resized on load
    val_fraction: float = 0.2
    folds: int = 0  # >= 2: stratified K-fold, every labelled image validated once, out of fold (deepfake/folds.py)
    augmentation: str = "seed"  # seed | lossless (data.train_transform, data.sample_transform)
    batch_size: int = 128
    max_steps_per_epoch: int = 0  # 0 = whole epoch; tests cap it
    # Generated samples (from the training split only)
    augment_per_class: int = 250
    adversarial_count: int = 400
    # Evaluation
    eval_epsilons: tuple[float, ...] = (0.0, 0.02, 0.03, 0.05, 0.08, 8 / 255)
    pgd_steps: int = 10
    corruption_severities: tuple[int, ...] = (1, 2, 3)
    gradcam_images: int = 6  # 0: no Grad-CAM figure
    eval_batch_size: int = 256
    # attack and corruption sweeps measure a seeded class-stratified sample of at most this many validation
    # images (0: all); clean metrics always use the whole split (evaluate.evaluation_sample)
    eval_max_images: int = 2000
    tta_flip: bool = False
    # Recipes: every member's, then each named member's own values (``--set resnet_se.lr=1e-3``)
    recipe: Recipe = Recipe()
    members: dict[str, dict] = field(default_factory=dict)

    def member(self, name: str | None) -> Recipe:
        """``name``'s recipe: the shared one with its own values over it (the shared one for None)."""
        return dataclasses.replace(self.recipe, **self.members.get(name, {})) if name else self.recipe

    def training_values(self, name: str | None) -> dict:
        """Everything that decides how ``name`` trains: the shared training fields and its recipe, by field name."""
        return {**{k: getattr(self, k) for k in SHARED_TRAINING_KEYS}, **dataclasses.asdict(self.member(name))}

    def member_fingerprint(self, name: str, phase: str) -> str:
        """Short hash of what decides ``name``'s ``phase`` ("base" or "final") checkpoint besides the data and,
        for "final", the adversarial pool: its training values (phase-2 fields for "final" only; patience only
        where it stops training; weights_dir only for a pretrained member)."""
        values = self.training_values(name)
        if phase == "base":
            values = {k: v for k, v in values.items() if k not in PHASE2_FIELDS}
        if values["average_epochs"]:
            values.pop("patience")
        if values["pretrained"]:
            values["weights_dir"] = self.weights_dir
        return _digest(values)

    def fingerprint(self, keys: tuple[str, ...], **extra) -> str:
        """Short hash of the named shared fields (and ``extra`` values), so a rerun can tell whether a generated
        output is stale."""
        return _digest({**{k: getattr(self, k) for k in keys}, **extra})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _digest(values: dict) -> str:
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=list).encode()).hexdigest()[:12]


RUN_FIELDS = tuple(f.name for f in fields(Config) if f.name not in ("preset", "recipe", "members"))
# The shared fields that decide what every trained model is (with its recipe and the data).
SHARED_TRAINING_KEYS = ("seed", "precision", "image_size", "val_fraction", "augmentation", "batch_size",
                        "max_steps_per_epoch", "augment_per_class")

# What the small-data measurements kept (benchmarks/LEVERS.md): augmentation that never resamples pixels,
# epochs chosen on validation accuracy (the metric the submission is scored on), budgets near the robustness
# targets, a PGD-3 adversarial share; for the two timm members the spectrum head (without it they stay near
# chance from scratch; on ResNet-SE it costs robustness), 3x the learning rate and half width (2.5x faster,
# accuracy within noise); bf16 steps where they are 1.5x faster on bf16 CPUs (EfficientNet is slower in bf16).
_MEASURED = dict(
    augmentation="lossless", select_metric="accuracy", fgsm_epsilons=(2 / 255, 4 / 255, 6 / 255, 8 / 255),
    finetune_attack_steps=3,
    members={"convnext_tiny": dict(lr=1.5e-3, width=0.5, spectrum=True, bf16=True),
             "efficientnet_b0": dict(lr=1.5e-3, width=0.5, spectrum=True),
             "resnet_se": dict(bf16=True)},
)

# The reference recipe, sized for 20 CPU minutes: 30 epochs whose last 10 are averaged (batch-norm
# statistics recomputed), then 12 epochs of phase 2 at {4, 6, 8, 10}/255 with the clean share anchored
# to the base model's predictions, crafted in bf16 for ResNet-SE.
_FULL = dict(
    _MEASURED, base_epochs=30, average_epochs=10, warmup_epochs=1, label_smoothing=0.1, fgsm_random_start=True,
    finetune_epochs=12, finetune_lr=3e-4, fgsm_epsilons=(4 / 255, 6 / 255, 8 / 255, 10 / 255), finetune_anchor=1.0,
    eval_epsilons=(0.0, 2 / 255, 4 / 255, 8 / 255),
    members={**_MEASURED["members"], "resnet_se": dict(bf16=True, bf16_crafting=True)},
)

PRESETS: dict[str, dict] = {
    "full": _FULL,
    # ImageNet-pretrained timm members at full width with their stock stems, fed the 32x32 images up-scaled
    # inside the model, fine-tuned briefly on images half of which get a blur, JPEG or noise (ImageNet
    # features are otherwise blind under blur); ResNet-SE (no ImageNet weights) trains from scratch as in full.
    "pretrained": dict(
        _FULL, require_pretrained=True, pretrained=True, input_size=64, pretrained_epochs=8, corruption_prob=0.5,
        members={"convnext_tiny": dict(bf16=True),  # full width, the shared learning rate, no spectrum head
                 "resnet_se": dict(_FULL["members"]["resnet_se"], pretrained=False, corruption_prob=0.0)},
    ),
    # The original seed notebook's recipe, kept so it can be rerun and compared.
    "seed": {},
    # The same pipeline scaled down to a few CPU minutes.
    "quick": dict(
        _MEASURED, base_epochs=6, patience=6, finetune_epochs=2, augment_per_class=100, adversarial_count=160,
        pgd_steps=5, corruption_severities=(2,), eval_epsilons=(0.0, 8 / 255),
    ),
    # Seconds: for tests and smoke runs only.
    "tiny": dict(
        _MEASURED, batch_size=32, base_epochs=1, patience=1, finetune_epochs=1, max_steps_per_epoch=2,
        augment_per_class=8, adversarial_count=8, pgd_steps=2, corruption_severities=(1,),
        gradcam_images=2, eval_batch_size=64, eval_epsilons=(0.0, 0.03), threads=1,
    ),
}


# Values a run would crash on late (after minutes of training) or that would silently mean nothing.
_AT_LEAST_ONE = ("image_size", "batch_size", "pgd_steps", "eval_batch_size",
                 "base_epochs", "patience", "finetune_epochs", "finetune_attack_steps")
_NOT_NEGATIVE = ("folds", "threads", "max_steps_per_epoch", "augment_per_class", "adversarial_count",
                 "gradcam_images", "eval_max_images",
                 "input_size", "pretrained_epochs", "lr", "finetune_lr", "weight_decay", "average_epochs",
                 "warmup_epochs", "finetune_anchor")
_SHARES = ("corruption_prob", "adv_ratio")  # in [0, 1]
_BELOW_ONE = ("label_smoothing",)  # in [0, 1)
_BUDGETS = ("fgsm_epsilons", "eval_epsilons")  # pixel units in [0, 1]
_CHOICES = {"augmentation": AUGMENTATIONS, "select_metric": SELECT_METRICS, "precision": PRECISIONS}


def make_config(preset: str = "full", /, **overrides) -> Config:
    """Preset values, then explicit overrides: ``lr=...`` sets every member (replacing the preset's per-member
    values of it), ``resnet_se.lr=...`` one. Unknown names and out-of-range values fail loudly."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "preset" in overrides:
        raise ConfigError("the preset is not a field to set: choose it with --preset")
    reserved = sorted({"recipe", "members"} & set(overrides))
    if reserved:
        raise ConfigError(f"{', '.join(reserved)} is not a field to set: set a member's own value with "
                          f"--set NAME.FIELD=VALUE, every member's with --set FIELD=VALUE")
    values = dict(PRESETS[preset])
    members = {name: dict(own) for name, own in values.pop("members", {}).items()}
    for key, value in overrides.items():
        name, dot, key_field = key.rpartition(".")
        if not dot:
            values[key] = value
            for own in members.values():
                own.pop(key, None)
        elif key_field in RUN_FIELDS:
            raise ConfigError(f"{key}: {key_field} is shared by every member; set it with --set {key_field}=...")
        else:
            members.setdefault(name, {})[key_field] = value
    _check_names(set(values) | {f for own in members.values() for f in own})
    config = Config(preset=preset, **{k: _typed(k, v) for k, v in values.items() if k in RUN_FIELDS},
                    recipe=Recipe(**{k: _typed(k, v) for k, v in values.items() if k in RECIPE_FIELDS}),
                    members={name: {k: _typed(k, v) for k, v in own.items()} for name, own in members.items() if own})
    _check(config)
    return config


def _check_names(names: set[str]) -> None:
    known = set(RUN_FIELDS) | set(RECIPE_FIELDS)
    unknown = sorted(names - known)
    if unknown:
        hints = [f"{name} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(name, known, 1)) else name
                 for name in unknown]
        raise ConfigError(f"unknown config field(s): {', '.join(hints)}")


def _check(config: Config) -> None:
    """Choices, model names and ranges of the shared fields and of every member's resolved recipe."""
    bad = _unknown_models((*config.models, *config.members))
    if bad:
        raise ConfigError(f"unknown model {', '.join(bad)}; choose from {', '.join(MODEL_NAMES)} or a timm model "
                          f"name (`python -c \"import timm; print(timm.list_models('*lite*'))\"`)")
    if len(set(config.models)) < len(config.models):
        raise ConfigError(f"models names a model twice ({', '.join(config.models)}); name each once")
    problems = [text for _, text in _problems("", config) + _problems("", config.recipe)]
    for name, own in config.members.items():  # a member's own values; the shared ones are checked above
        problems += [text for key, text in _problems(f"{name}.", config.member(name))
                     if key in own or key == "bf16_crafting" and "bf16" in own]
    if problems:
        raise ConfigError(f"config value out of range: {'; '.join(problems)}")


def _problems(prefix: str, values: Config | Recipe) -> list[tuple[str, str]]:
    """(field, what is wrong) for the fields ``values`` has, each named ``prefix`` + field in the text."""
    def own(names):
        return [(n, prefix + n, getattr(values, n)) for n in names if hasattr(values, n)]

    bad = [(k, f"{n}={v} (choose from {', '.join(_CHOICES[k])})") for k, n, v in own(_CHOICES) if v not in _CHOICES[k]]
    bad += [(k, f"{n}={v} (at least 1)") for k, n, v in own(_AT_LEAST_ONE) if v < 1]
    bad += [(k, f"{n}={v} (not negative)") for k, n, v in own(_NOT_NEGATIVE) if v < 0]
    bad += [(k, f"{n}={v} (in [0, 1])") for k, n, v in own(_SHARES) if not 0 <= v <= 1]
    bad += [(k, f"{n}={v} (in [0, 1))") for k, n, v in own(_BELOW_ONE) if not 0 <= v < 1]
    bad += [(k, f"{n} has {eps} (budgets are pixel units in [0, 1])") for k, n, v in own(_BUDGETS) for eps in v
            if not 0 <= eps <= 1]
    if isinstance(values, Recipe):
        bad += [("width", f"{prefix}width={values.width} (positive)")] if not values.width > 0 else []
        bad += ([("bf16_crafting", f"{prefix}bf16_crafting=True needs {prefix}bf16=True: its training steps run in "
                                   f"float32, so it crafts in float32")] if values.bf16_crafting and not values.bf16
                else [])
    else:
        bad += ([("val_fraction", f"val_fraction={values.val_fraction} (between 0 and 1)")]
                if not 0 < values.val_fraction < 1 else [])
        bad += [("folds", f"folds={values.folds} (0 for one split, else at least 2)")] if values.folds == 1 else []
    return bad


def _unknown_models(names: tuple[str, ...]) -> list[str]:
    """The names neither in the zoo nor timm's (timm, and so torch, load only when a name needs it)."""
    others = [name for name in names if name not in MODEL_NAMES]
    if not others:
        return []
    import timm

    return [name for name in others if not timm.is_model(name)]


_KINDS = {int: "an integer", float: "a number", bool: "True or False", str: "a string", tuple: "a tuple like (1, 2)"}
_DEFAULTS = {**{f: getattr(Config(), f) for f in RUN_FIELDS}, **dataclasses.asdict(Recipe())}


def _typed(name: str, value):
    """The value as its field's type (lists become tuples, ints floats); ConfigError when it cannot be."""
    expected = type(_DEFAULTS[name])
    value = _tuples(value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"config field {name} takes {_KINDS[expected]}, got {value!r}")
    return value


# A run saved before recipes (flat fields and per-model side tables), read as shared values and member recipes.
_SIDE_TABLES = {"model_lr": "lr", "model_width": "width", "model_corruption_prob": "corruption_prob"}
_MODEL_LISTS = {"spectrum_models": "spectrum", "bf16_models": "bf16", "bf16_crafting": "bf16_crafting"}


def config_from_dict(values: dict) -> Config:
    """Rebuild a saved config (JSON turns tuples into lists), also one saved before member recipes."""
    values = {k: _tuples(v) for k, v in values.items()}
    if "recipe" in values:
        recipe = Recipe(**{k: v for k, v in values["recipe"].items() if k in RECIPE_FIELDS})
        members = {name: {k: v for k, v in own.items() if k in RECIPE_FIELDS}
                   for name, own in values.get("members", {}).items()}
    else:
        recipe = Recipe(**{k: v for k, v in values.items() if k in RECIPE_FIELDS and k not in _MODEL_LISTS})
        members = {}
        for table, key in _SIDE_TABLES.items():
            for name, value in values.get(table, ()):
                members.setdefault(name, {})[key] = value
        for listing, key in _MODEL_LISTS.items():
            for name in values.get(listing, ()):
                members.setdefault(name, {})[key] = True
    return Config(**{k: values[k] for k in ("preset", *RUN_FIELDS) if k in values}, recipe=recipe, members=members)


def _tuples(value):
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
