"""The command line every entry point shares: presets, the common flags and ``--set FIELD=VALUE``."""
from __future__ import annotations

import argparse
import ast

from .config import MODEL_NAMES, PRESETS, Config, make_config
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
    parser.add_argument("--generated-dir", default=None,
                        help="where augmented/adversarial samples go (default: data/generated)")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="checkpoints, split.json and results.json (default: checkpoints)")
    parser.add_argument("--viz-dir", default=None, help="figures and report.md (default: visualizations)")
    parser.add_argument("--models", default=None,
                        help=f"comma list of {','.join(MODEL_NAMES)} or any timm model name (default: the first three)")
    parser.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=None, help="split, initialisation and batch order (default: 42)")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                        help="start timm members from ImageNet weights (the pretrained preset requires them)")
    parser.add_argument("--weights-dir", default=None,
                        help="folder of ImageNet weights named <timm name>.safetensors (or .pth, .bin)")
    parser.add_argument("--epochs", type=int, default=None, help="base-training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default: the preset's, 128)")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", dest="overrides",
                        help="any other config field (deepfake/config.py), e.g. --set lr=1e-3 finetune_anchor=0")


def config_from_args(args: argparse.Namespace) -> Config:
    models = tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else None
    flags = dict(
        data_dir=args.data_dir,
        generated_dir=args.generated_dir,
        checkpoint_dir=args.checkpoint_dir,
        viz_dir=args.viz_dir,
        models=models,
        device=args.device,
        seed=args.seed,
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
