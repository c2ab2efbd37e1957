"""The command line every entry point shares: presets, the common flags and ``--set FIELD=VALUE``."""
from __future__ import annotations

import argparse
import ast

from .config import MODEL_NAMES, OPERATING_POINTS, PRESETS, WEIGHT_SCHEMES, Config, make_config
from .errors import ConfigError

DEFAULT_PRESET = "full"
PRESET_HELP = {  # what each is, and its minutes on a 2-core CPU, for --help
    "full": ("the reference recipe", "15-20"),
    "pretrained": ("ImageNet-pretrained timm members, their weights from --weights-dir or the hub", "about 35"),
    "quick": ("the same pipeline, shorter", "3-5"),
    "seed": ("the original notebook's recipe, kept for comparison", "30+"),
    "tiny": ("for tests and smoke runs", "under 1"),
}


def parse_overrides(items: list[str]) -> dict:
    """``FIELD=VALUE`` strings as a dict: VALUE is a Python literal (``8``, ``1e-3``, ``"(0.01, 0.03)"``),
    anything else a plain string (``augmentation=seed``)."""
    overrides = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--set expects FIELD=VALUE, got {item!r}; e.g. --set lr=1e-3")
        try:
            overrides[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[name] = text
    return overrides


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every entry point shares; values left as None keep the preset's."""
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS),
                        help=f"default {DEFAULT_PRESET}; " + "; ".join(
                            f"{name}: {what}, {minutes} min" for name, (what, minutes) in PRESET_HELP.items()))
    parser.add_argument("--data-dir", default=None, help="folder with labelled images (default: data, else demo data)")
    parser.add_argument("--labels", nargs="+", default=None, metavar="FILE",
                        help="labels from files, not folder names: a CSV (file-name and label columns, real/fake or "
                             "0/1, names relative to --data-dir) or the challenge's real_*.json and fake_*.json")
    parser.add_argument("--generated-dir", default=None,
                        help="where augmented/adversarial samples go (default: data/generated)")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="checkpoints, split.json and results.json (default: checkpoints)")
    parser.add_argument("--viz-dir", default=None, help="figures and report.md (default: visualizations)")
    parser.add_argument("--models", default=None,
                        help=f"comma list of {','.join(MODEL_NAMES)} or any timm model name (default: the first three)")
    parser.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                        help="where to train (default auto: the GPU when there is one)")
    parser.add_argument("--folds", type=int, default=None, metavar="K",
                        help="train every model on K stratified folds and score it out of fold on every labelled "
                             "image (default: one split, val_fraction for validation)")
    parser.add_argument("--seed", type=int, default=None, help="split, initialisation and batch order (default: 42)")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                        help="start timm members from ImageNet weights (the pretrained preset requires them)")
    parser.add_argument("--weights-dir", default=None,
                        help="folder of ImageNet weights named <timm name>.safetensors (or .pth, .bin)")
    parser.add_argument("--epochs", type=int, default=None, help="base-training epochs of every member")
    parser.add_argument("--finetune-epochs", type=int, default=None,
                        help="phase-2 (adversarial fine-tuning) epochs of every member (default: the preset's)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default: the preset's, 128)")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", dest="overrides",
                        help="any other config field (deepfake/config.py), e.g. --set lr=1e-3 finetune_anchor=0; a "
                             "recipe field for one member: --set resnet_se.lr=1e-3 (retrains that member only)")


def config_from_args(args: argparse.Namespace) -> Config:
    models = tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else None
    flags = dict(
        data_dir=args.data_dir,
        labels=tuple(args.labels) if args.labels else None,
        generated_dir=args.generated_dir,
        checkpoint_dir=args.checkpoint_dir,
        viz_dir=args.viz_dir,
        models=models,
        device=args.device,
        seed=args.seed,
        folds=args.folds,
        pretrained=args.pretrained,
        weights_dir=args.weights_dir,
        base_epochs=args.epochs,
        finetune_epochs=args.finetune_epochs,
        batch_size=args.batch_size,
    )
    flags = {name: value for name, value in flags.items() if value is not None}
    overrides = parse_overrides(args.overrides)
    twice = sorted(set(flags) & set(overrides))
    if twice:
        raise ConfigError(f"{', '.join(twice)} set both by a flag and by --set; give each once")
    return make_config(args.preset or DEFAULT_PRESET, **overrides, **flags)


def default_preset_notice(args: argparse.Namespace) -> str | None:
    """One line saying which preset a run without --preset gets and what it costs, so the longest run never
    starts unannounced."""
    if args.preset is not None:
        return None
    what, minutes = PRESET_HELP[DEFAULT_PRESET]
    return (f"no --preset given: running {DEFAULT_PRESET}, {what}, about {minutes} min on 2 CPU cores; "
            f"--preset quick takes about {PRESET_HELP['quick'][1]} min")


def add_ensemble_arguments(parser: argparse.ArgumentParser) -> None:
    """How ensemble.py and predict.py pick the members, their weights and the cut, so both call an image alike."""
    parser.add_argument("--checkpoint-dir", action="append", default=None, metavar="DIR",
                        help="the training run's folder (results.json; default checkpoints); repeat it to average "
                             "runs (seeds, or k-fold runs), each model scored only on images it never trained on")
    parser.add_argument("--checkpoints", default=None,
                        help="comma list of .pt files (default: every final checkpoint of the run)")
    parser.add_argument("--operating-point", default=None, choices=OPERATING_POINTS,
                        help="where the weights stand on the members' accuracy-robustness frontier, measured on "
                             "validation with the ensemble attacked whole: accurate (best clean accuracy, never below "
                             "the best member clean or corrupted), robust (best under PGD at 8/255; within one "
                             "standard error of it, the weighting nearest one member alone) or balanced (the most "
                             f"robust within 1 point of accurate's clean accuracy; default {OPERATING_POINTS[0]})")
    parser.add_argument("--min-clean", type=float, default=None, metavar="ACCURACY",
                        help="a floor on the operating point's clean validation accuracy, e.g. 0.90")
    parser.add_argument("--weights", default=None, choices=WEIGHT_SCHEMES,
                        help="instead of an operating point, weigh each model equally, or by its validation accuracy, "
                             "ROC-AUC or accuracy's log-odds")
    parser.add_argument("--threshold", type=float, default=None,
                        help="fake probability from which an image is called fake "
                             "(default: the cut with the best validation accuracy, nearest 0.5 among ties)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the models run")


def ensemble_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``load_ensemble`` that :func:`add_ensemble_arguments` parsed."""
    checkpoints = [c.strip() for c in args.checkpoints.split(",") if c.strip()] if args.checkpoints else None
    return {"checkpoint_dir": args.checkpoint_dir or ["checkpoints"], "checkpoints": checkpoints,
            "operating_point": args.operating_point, "min_clean": args.min_clean, "scheme": args.weights,
            "threshold": args.threshold, "device": args.device}
