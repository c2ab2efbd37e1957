"""The two-member ensemble's whole frontier on the benchmark's unseen split: a probe, never a choice.

    python -m benchmarks.unseen_frontier benchmarks/runs/pretrained benchmarks/runs/pretrained-seed43

``ensemble.py`` chooses its weighting on the pipeline's validation images; this measures every weighting
on the 420 unseen images instead, each attacked whole (PGD-20 at 8/255, the benchmark's attack), at a cut
of 0.5. It answers whether a target such as ``balanced``'s 91% clean and 30% at 8/255 is out of reach of any
weighting of these members (then only better members reach it) or only of the validation choice. Since the
unseen images choose nothing here, its best row is an upper bound, not a result. Writes
benchmarks/UNSEEN_FRONTIER.md.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from benchmarks.benchmark import ATTACK_STEPS, SPLIT_SEED, UNSEEN_FRACTION, challenge_split
from benchmarks.common import REPO, SHARED, command_as_typed, report_stamp
from deepfake.checkpoints import load_checkpoint
from deepfake.cut import weight_label, weighted_fake_proba
from deepfake.data import ImageSet
from deepfake.errors import DeepfakeError, report_errors
from deepfake.frontier import EnsembleModel, attacked_accuracy
from deepfake.inference import as_nchw_uint8, predict_fake_proba, to_float
from deepfake.io import write_text
from deepfake.results import load_results, results_path

OUTPUT = REPO / "benchmarks" / "UNSEEN_FRONTIER.md"
EPS = 8 / 255


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="benchmark run folders of two-member runs")
    parser.add_argument("--member", default="resnet_se", help="the member whose share the rows vary")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 0.9],
                        help="its shares that are attacked (every tenth is scored clean)")
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    command = command_as_typed("unseen_frontier")
    return report_errors(lambda: write_report(args, command))


def write_report(args: argparse.Namespace, command: str) -> None:
    """Each run's section replaced (written as soon as it is measured), other runs' sections kept."""
    _, unseen = challenge_split(args.data, UNSEEN_FRACTION, SPLIT_SEED)
    sections = read_sections(args.output)
    for run in args.runs:
        rows = frontier_rows(run / "checkpoints", unseen, args.member, args.shares)
        sections[run.as_posix()] = [
            report_stamp(), f"- Command: `{command}`", "", "| weights | clean | PGD-20 8/255 |", "|---|---:|---:|",
            *(f"| {weight_label(w)} | {100 * clean:.1f} | {'' if pgd is None else f'{100 * pgd:.1f}'} |"
              for w, clean, pgd in rows)]
        write_text(args.output, render(sections, len(unseen)))
        print("\n".join(sections[run.as_posix()]), flush=True)


def read_sections(path: Path) -> dict[str, list[str]]:
    """{run folder: its section's lines} of an earlier report."""
    sections: dict[str, list[str]] = {}
    if path.exists():
        for block in path.read_text().split("\n## `")[1:]:
            name, _, body = block.partition("`\n")
            sections[name] = body.strip("\n").splitlines()
    return sections


def render(sections: dict[str, list[str]], n_unseen: int) -> str:
    lines = ["# The ensemble's frontier on the unseen split (a probe: the unseen images choose nothing)\n",
             f"{n_unseen} unseen images (split seed {SPLIT_SEED}); cut 0.5; PGD-{ATTACK_STEPS} at 8/255 attacks the "
             "weighted ensemble whole (flip TTA as the run used it); clean only where no attack is listed. A run's "
             "section is replaced when it is measured again.\n"]
    for name, body in sections.items():
        lines += [f"## `{name}`\n", *body, ""]
    return "\n".join(lines)


def frontier_rows(checkpoint_dir: Path, unseen: ImageSet, member: str,
                  attacked_shares: list[float]) -> list[tuple[dict[str, float], float, float | None]]:
    """(weights, clean accuracy, PGD accuracy or None) for ``member``'s share 0, 0.1, ..., 1 at a cut of 0.5;
    only ``attacked_shares`` are attacked."""
    results = load_results(results_path(checkpoint_dir))
    models = {name: load_checkpoint(entry["checkpoints"]["final"]) for name, entry in results["models"].items()}
    if member not in models or len(models) != 2:
        raise DeepfakeError(f"{checkpoint_dir}: needs two final members, one of them {member}; found "
                            f"{', '.join(models) or 'none'}")
    other = next(name for name in models if name != member)
    tta = bool(results["config"].get("tta_flip"))
    probs = {name: predict_fake_proba(model, unseen.images, tta_flip=tta) for name, model in models.items()}
    images = to_float(as_nchw_uint8(unseen.images), torch.device("cpu"))
    labels = torch.from_numpy(unseen.labels)
    rows = []
    for share in np.round(np.linspace(0, 1, 11), 1):
        weights = {member: float(share), other: float(round(1 - share, 1))}
        clean = float(np.mean((weighted_fake_proba(probs, weights) >= 0.5) == unseen.labels))
        pgd = None
        if any(abs(share - s) < 1e-6 for s in attacked_shares):
            ensemble = EnsembleModel(models, weights, 0.5, tta)
            pgd = attacked_accuracy(ensemble, images, labels, EPS, ATTACK_STEPS, len(labels), seed=0)
        rows.append((weights, clean, pgd))
    return rows


if __name__ == "__main__":
    sys.exit(main())
