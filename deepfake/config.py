"""One configuration object for the whole pipeline, with named presets.

Every stage reads its knobs from :class:`Config`, and every run saves the resolved
config next to its outputs, so any result can be reproduced from its results file.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
from dataclasses import dataclass, fields

from .errors import ConfigError

MODEL_NAMES = ("convnext_tiny", "efficientnet_b0", "resnet_se")
AUGMENTATIONS = ("lossless", "seed")  # see data.train_transform and data.sample_transform
SELECT_METRICS = ("accuracy", "auc")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")  # of the training steps (deepfake/precision.py)
WEIGHT_SCHEMES = ("equal", "accuracy", "auc", "logodds")  # how ensemble.py weighs each model (deepfake.ensemble)
OPERATING_POINTS = ("balanced", "accurate", "robust")  # ensemble.py's default first (deepfake.frontier)
CHOICES = {"augmentation": AUGMENTATIONS, "select_metric": SELECT_METRICS, "precision": PRECISIONS}
MODEL_LISTS = ("models", "spectrum_models", "bf16_models", "bf16_crafting")  # each name: the zoo's or timm's


@dataclass
class Config:
    """Defaults are the seed notebook's recipe; presets override a few fields."""

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
    pretrained: bool = False  # start the timm members from ImageNet weights (deepfake/pretrained.py)
    require_pretrained: bool = False  # a timm member without weights stops the run before training (else: scratch)
    weights_dir: str = ""  # folder of <timm name>.safetensors/.pth/.bin files, tried before the hub
    spectrum_models: tuple[str, ...] = ()  # models that get a Fourier-spectrum head (models.SpectrumHead)
    threads: int = 0  # torch CPU threads; 0 = all cores
    # auto: bfloat16 autocast on GPUs that compute it natively, float16 with a gradient scaler on older ones, and
    # on a CPU bfloat16 for bf16_models where it is native, else float32; fp32 | fp16 | bf16: that, every model
    precision: str = "auto"
    bf16_models: tuple[str, ...] = ()  # models that precision=auto trains under bfloat16 autocast on a CPU
    # Data
    image_size: int = 32  # pixels; other sizes are resized on load
    input_size: int = 0  # side the timm members see, resized inside the model (models.Resize); 0 = image_size
    val_fraction: float = 0.2
    folds: int = 0  # >= 2: stratified K-fold, every labelled image validated once, out of fold (deepfake/folds.py)
    augmentation: str = "seed"  # seed | lossless (data.train_transform, data.sample_transform)
    corruption_prob: float = 0.0  # share of training images given a blur, JPEG or noise (data.training_corruption)
    model_corruption_prob: tuple[tuple[str, float], ...] = ()  # (model, share) pairs replacing corruption_prob
    # Phase 1: base training
    batch_size: int = 128
    lr: float = 5e-4  # AdamW, peak of the cosine schedule
    model_lr: tuple[tuple[str, float], ...] = ()  # (model, lr) pairs that replace lr in phase 1 for that model
    model_width: tuple[tuple[str, float], ...] = ()  # (model, multiplier) pairs scaling that model's channels
    pretrained_epochs: int = 0  # phase-1 epochs of a model that loaded ImageNet weights (0: base_epochs); last kept
    backbone_lr_scale: float = 1.0  # a pretrained model's backbone trains at this times the lr of its new head
    weight_decay: float = 1e-4
    base_epochs: int = 50
    patience: int = 15  # epochs without a better validation select_metric
    select_metric: str = "auc"  # auc | accuracy: picks the best base epoch (the other breaks ties)
    # > 0: phase 1 keeps the mean of its last N epochs' weights (batch-norm statistics recomputed on the
    # training images) instead of its best epoch on validation, and runs every epoch (no early stopping)
    average_epochs: int = 0
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    max_steps_per_epoch: int = 0  # 0 = whole epoch; tests cap it
    # Phase 2: adversarial fine-tuning
    finetune_epochs: int = 15
    finetune_lr: float = 1e-4
    adv_ratio: float = 0.3  # share of each fine-tune batch that is adversarial
    fgsm_epsilons: tuple[float, ...] = (0.02, 0.03, 0.05, 0.08)  # pixel units in [0, 1]
    fgsm_random_start: bool = False  # "Fast is better than free" style start
    finetune_attack_steps: int = 1  # 1: FGSM crafts the adversarial share; k > 1: PGD-k (random start, step 2.5 eps/k)
    finetune_anchor: float = 0.0  # > 0: weight of KL(base model || model) on phase 2's clean share (train._batch_loss)
    # bf16_models named here also craft phase 2's adversarial share and compute its anchor targets in the training
    # steps' precision when that is bfloat16 (train._phase2_precision); else, and in evaluation, attacks are float32
    bf16_crafting: tuple[str, ...] = ()
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

    def fingerprint(self, keys: tuple[str, ...]) -> str:
        """Short hash of the named fields, so a rerun can tell whether an output is stale."""
        payload = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True, default=list)
        return hashlib.sha1(payload.encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def corruption(self, model: str | None) -> float:
        """``model``'s share of corrupted training images: its ``model_corruption_prob`` entry, else
        ``corruption_prob``."""
        return float(dict(self.model_corruption_prob).get(model, self.corruption_prob))

    def width(self, model: str) -> float:
        """``model``'s channel multiplier: its ``model_width`` entry, else full width."""
        return float(dict(self.model_width).get(model, 1.0))


# Fields that decide what a trained model is; changing any of them invalidates checkpoints.
TRAINING_KEYS = (
    "seed", "pretrained", "weights_dir", "spectrum_models", "precision", "bf16_models", "image_size", "input_size",
    "pretrained_epochs", "backbone_lr_scale", "val_fraction", "augmentation",
    "corruption_prob", "model_corruption_prob", "batch_size", "lr", "model_lr", "model_width", "weight_decay",
    "base_epochs", "patience", "select_metric", "average_epochs", "warmup_epochs", "label_smoothing",
    "max_steps_per_epoch", "finetune_epochs", "finetune_lr", "adv_ratio", "fgsm_epsilons", "fgsm_random_start",
    "finetune_attack_steps", "finetune_anchor", "bf16_crafting", "augment_per_class", "adversarial_count",
)

# What the small-data measurements kept (benchmarks/LEVERS.md): augmentation that never resamples pixels,
# epochs chosen on validation accuracy (the metric the submission is scored on), per-model learning rates,
# budgets near the robustness targets, a PGD-3 adversarial share, and the spectrum head for the two timm
# models only (without it they stay near chance from scratch; on ResNet-SE it costs robustness).
_MEASURED = dict(
    augmentation="lossless", select_metric="accuracy", spectrum_models=("convnext_tiny", "efficientnet_b0"),
    model_lr=(("convnext_tiny", 1.5e-3), ("efficientnet_b0", 1.5e-3)),  # the timm models train faster at 3x
    fgsm_epsilons=(2 / 255, 4 / 255, 6 / 255, 8 / 255),
    finetune_attack_steps=3,
    bf16_models=("convnext_tiny", "resnet_se"),  # 1.5x faster steps on bf16 CPUs; EfficientNet is slower in bf16
    model_width=(("convnext_tiny", 0.5), ("efficientnet_b0", 0.5)),  # 2.5x faster, accuracy within noise
)

# The reference recipe, sized for 20 CPU minutes: 30 epochs whose last 10 are averaged (batch-norm
# statistics recomputed), then 12 epochs of phase 2 at {4, 6, 8, 10}/255 with the clean share anchored
# to the base model's predictions, crafted in bf16 for ResNet-SE.
_FULL = dict(
    _MEASURED, base_epochs=30, average_epochs=10, warmup_epochs=1, label_smoothing=0.1, fgsm_random_start=True,
    finetune_epochs=12, finetune_lr=3e-4, fgsm_epsilons=(4 / 255, 6 / 255, 8 / 255, 10 / 255), finetune_anchor=1.0,
    bf16_crafting=("resnet_se",), eval_epsilons=(0.0, 2 / 255, 4 / 255, 8 / 255),
)

_DEFAULTS = Config()

PRESETS: dict[str, dict] = {
    "full": _FULL,
    # ImageNet-pretrained timm members at full width with their stock stems, fed the 32x32 images up-scaled
    # inside the model, fine-tuned briefly on images half of which get a blur, JPEG or noise (ImageNet
    # features are otherwise blind under blur); ResNet-SE (no ImageNet weights) trains from scratch as in full.
    "pretrained": dict(
        _FULL, pretrained=True, require_pretrained=True, input_size=64, pretrained_epochs=8, spectrum_models=(),
        model_width=(), model_lr=(), corruption_prob=0.5, model_corruption_prob=(("resnet_se", 0.0),),
    ),
    # The original seed notebook's recipe, kept so it can be rerun and compared.
    "seed": {},
    # The same pipeline scaled down to a few CPU minutes.
    "quick": dict(
        **_MEASURED, base_epochs=6, patience=6, finetune_epochs=2, augment_per_class=100, adversarial_count=160,
        pgd_steps=5, corruption_severities=(2,), eval_epsilons=(0.0, 8 / 255),
    ),
    # Seconds: for tests and smoke runs only.
    "tiny": dict(
        **_MEASURED, batch_size=32, base_epochs=1, patience=1, finetune_epochs=1, max_steps_per_epoch=2,
        augment_per_class=8, adversarial_count=8, pgd_steps=2, corruption_severities=(1,),
        gradcam_images=2, eval_batch_size=64, eval_epsilons=(0.0, 0.03), threads=1,
    ),
}


# Values a run would crash on late (after minutes of training) or that would silently mean nothing.
_AT_LEAST_ONE = ("image_size", "batch_size", "base_epochs", "patience", "finetune_epochs", "finetune_attack_steps",
                 "pgd_steps", "eval_batch_size")
_NOT_NEGATIVE = ("folds", "threads", "input_size", "pretrained_epochs", "backbone_lr_scale", "lr", "finetune_lr",
                 "weight_decay",
                 "average_epochs", "warmup_epochs",
                 "max_steps_per_epoch", "finetune_anchor", "augment_per_class",
                 "adversarial_count", "gradcam_images", "eval_max_images")
_SHARES = ("corruption_prob", "adv_ratio")  # in [0, 1]
_BELOW_ONE = ("label_smoothing",)  # in [0, 1)


def make_config(preset: str = "full", /, **overrides) -> Config:
    """Preset defaults, then explicit overrides; unknown names and out-of-range values fail loudly."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if "preset" in overrides:
        raise ConfigError("the preset is not a field to set: choose it with --preset")
    known = {f.name for f in fields(Config)}
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    unknown = sorted(set(values) - known)
    if unknown:
        hints = [f"{name} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(name, known, 1)) else name
                 for name in unknown]
        raise ConfigError(f"unknown config field(s): {', '.join(hints)}")
    config = Config(preset=preset, **{name: _typed(name, value) for name, value in values.items()})
    for name, allowed in CHOICES.items():
        if getattr(config, name) not in allowed:
            raise ConfigError(f"unknown {name} {getattr(config, name)}; choose from {', '.join(allowed)}")
    for name in MODEL_LISTS:
        bad = _unknown_models(getattr(config, name))
        if name == "models":
            bad += _unknown_models(tuple(m for m, _ in (*config.model_lr, *config.model_width,
                                                        *config.model_corruption_prob)))
        if bad:
            raise ConfigError(f"unknown model in {name}: {', '.join(bad)}; choose from {', '.join(MODEL_NAMES)} "
                              f"or a timm model name (`python -c \"import timm; print(timm.list_models('*lite*'))\"`)")
    bad_widths = [f"{m}={w}" for m, w in config.model_width if not w > 0]
    if bad_widths:
        raise ConfigError(f"model_width multipliers must be positive, got {', '.join(bad_widths)}")
    if len(set(config.models)) < len(config.models):
        raise ConfigError(f"models names a model twice ({', '.join(config.models)}); name each once")
    idle = [m for m in config.bf16_crafting if m not in config.bf16_models]
    if idle:
        raise ConfigError(f"bf16_crafting names {', '.join(idle)}, not in bf16_models: its training steps run in "
                          f"float32, so it crafts in float32; add it to bf16_models or drop it from bf16_crafting")
    _check_ranges(config)
    return config


def _unknown_models(names: tuple[str, ...]) -> list[str]:
    """The names neither in the zoo nor timm's (timm, and so torch, load only when a name needs it)."""
    others = [name for name in names if name not in MODEL_NAMES]
    if not others:
        return []
    import timm

    return [name for name in others if not timm.is_model(name)]


def _check_ranges(config: Config) -> None:
    value = functools.partial(getattr, config)
    bad = [f"{n}={value(n)} (at least 1)" for n in _AT_LEAST_ONE if value(n) < 1]
    bad += [f"{n}={value(n)} (not negative)" for n in _NOT_NEGATIVE if value(n) < 0]
    bad += [f"{n}={value(n)} (in [0, 1])" for n in _SHARES if not 0 <= value(n) <= 1]
    bad += [f"model_corruption_prob {m}={p} (in [0, 1])" for m, p in config.model_corruption_prob if not 0 <= p <= 1]
    bad += [f"{n}={value(n)} (in [0, 1))" for n in _BELOW_ONE if not 0 <= value(n) < 1]
    bad += [f"val_fraction={config.val_fraction} (between 0 and 1)"] if not 0 < config.val_fraction < 1 else []
    bad += [f"folds={config.folds} (0 for one split, else at least 2)"] if config.folds == 1 else []
    bad += ([f"average_epochs={config.average_epochs} (at most base_epochs={config.base_epochs})"]
            if config.average_epochs > config.base_epochs else [])
    bad += [f"{n} has {eps} (budgets are pixel units in [0, 1])" for n in ("fgsm_epsilons", "eval_epsilons")
            for eps in value(n) if not 0 <= eps <= 1]
    if bad:
        raise ConfigError(f"config value out of range: {'; '.join(bad)}")


_KINDS = {int: "an integer", float: "a number", bool: "True or False", str: "a string", tuple: "a tuple like (1, 2)"}


def _typed(name: str, value):
    """The value as its field's type (lists become tuples, ints floats); ConfigError when it cannot be."""
    expected = type(getattr(_DEFAULTS, name))
    value = _tuples(value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"config field {name} takes {_KINDS[expected]}, got {value!r}")
    return value


def config_from_dict(values: dict) -> Config:
    """Rebuild a saved config (JSON turns tuples into lists)."""
    return Config(**{f.name: _tuples(values[f.name]) for f in fields(Config) if f.name in values})


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
