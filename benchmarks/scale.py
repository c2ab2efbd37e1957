"""How the pipeline's time and memory grow with the number of images (CIFAKE's full release has 120,000).

    python -m benchmarks.scale                         # 2,000, 20,000 and 120,000 images
    python -m benchmarks.scale --sizes 2000,20000 --steps 10

For each size: a seeded demo data set (``deepfake.demo_data``'s images, half real, half fake) written to
a scratch folder and deleted after; one short run of the whole pipeline on it in a fresh process (the
``tiny`` preset with ResNet-SE alone at a quarter of its width, one epoch per phase capped at ``--steps``
training steps, every validation image scored after each epoch); that process's peak resident memory
(``os.wait4``) and the seconds of each stage from its results.json. Training steps are capped, so the
training stages' cost per image says little: the table gives their seconds per step beside it.
Writes benchmarks/SCALE.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import REPO, command_as_typed, report_stamp
from deepfake.data import CLASS_NAMES
from deepfake.demo_data import demo_image, source_photographs
from deepfake.io import read_json, write_text

OUTPUT = REPO / "benchmarks" / "SCALE.md"
SIZES = (2_000, 20_000, 120_000)
CHUNK = 1_000  # images per seeded generator: chunks are written in parallel, yet the data set is fixed by its seed
MODEL, WIDTH = "resnet_se", 0.25
STAGES = ("load_data", "augmented_samples", f"base:{MODEL}", "adversarial_samples", f"finetune:{MODEL}", "evaluate")
EVALUATION_PARTS = ("clean", "attacks", "corruptions", "figures", "gradcam")


def write_demo_images(root: Path, count: int, seed: int) -> None:
    """``count`` demo images, alternately real and fake, as root/train/{real,fake}/N.png."""
    photos = source_photographs()
    for name in CLASS_NAMES:
        (root / "train" / name).mkdir(parents=True, exist_ok=True)

    def write_chunk(chunk: int) -> None:
        rng = np.random.default_rng([seed, chunk])
        for number in range(chunk * CHUNK, min(count, (chunk + 1) * CHUNK)):
            label = number % 2
            image = demo_image(photos, label, rng, 32)
            path = root / "train" / CLASS_NAMES[label] / f"{number // 2 + 1}.png"
            cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(write_chunk, range(-(-count // CHUNK))))


def run_pipeline(data_dir: Path, out_dir: Path, steps: int, overrides: list[str]) -> tuple[dict, float, float]:
    """(results.json, peak resident GiB, wall seconds) of one short pipeline run in a fresh process."""
    command = [sys.executable, str(REPO / "deepfake_detection.py"), "--preset", "tiny", "--models", MODEL,
               "--data-dir", str(data_dir), "--checkpoint-dir", str(out_dir / "checkpoints"),
               "--generated-dir", str(out_dir / "generated"), "--viz-dir", str(out_dir / "visualizations"),
               "--device", "cpu", "--epochs", "1", "--finetune-epochs", "1",
               "--set", f"{MODEL}.width={WIDTH}", f"max_steps_per_epoch={steps}", *overrides]
    started = time.perf_counter()
    with open(out_dir / "run.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the run on {data_dir} failed:\n{(out_dir / 'run.log').read_text()[-3000:]}")
    return read_json(out_dir / "checkpoints" / "results.json"), usage.ru_maxrss / 2**20, wall  # KiB -> GiB


def measure_size(count: int, steps: int, seed: int, overrides: list[str]) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix=f"scale_{count}_"))
    try:
        started = time.perf_counter()
        write_demo_images(scratch / "data", count, seed)
        generated = time.perf_counter() - started
        (scratch / "run").mkdir()
        results, peak_gib, wall = run_pipeline(scratch / "data", scratch / "run", steps, overrides)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    entry = results["models"][MODEL]
    counts = results["data"]["counts"]
    return {"images": count, "generate_s": generated, "wall_s": wall, "peak_gib": peak_gib,
            "timings": results["timings"], "evaluation": entry["evaluation"]["seconds"],
            "n_val": entry["evaluation"]["n_val"], "n_sample": entry["evaluation"]["n_sample"],
            "n_train": sum(counts["train"].values()),
            "seconds_per_step": {phase: sum(epoch["seconds"] for epoch in history) / (len(history) * steps)
                                 for phase, history in entry["history"].items()}}


def table(rows: list[dict]) -> list[str]:
    per_k = " | ".join(f"{stage} s/1k" for stage in STAGES)
    lines = [f"| images | train / val / sample | load s | {per_k} | training s/step: base, finetune | peak RSS GiB "
             f"| evaluation share | run s |",
             "|" + "---|" * 3 + "---:|" * (len(STAGES) + 4)]
    for row in rows:
        timings, per_image = row["timings"], 1000 / row["images"]
        total = sum(timings[stage] for stage in STAGES)
        per_step = ", ".join(f"{row['seconds_per_step'][phase]:.2f}" for phase in ("base", "finetune"))
        lines.append(f"| {row['images']:,} | {row['n_train']:,} / {row['n_val']:,} / {row['n_sample']:,} "
                     f"| {timings['load_data']:.1f} | "
                     + " | ".join(f"{timings[stage] * per_image:.3f}" for stage in STAGES)
                     + f" | {per_step} | {row['peak_gib']:.2f} | {timings['evaluate'] / total:.0%} "
                     f"| {row['wall_s']:.0f} |")
    return lines


def evaluation_table(rows: list[dict]) -> list[str]:
    lines = ["| images | " + " | ".join(f"{part} s" for part in EVALUATION_PARTS) + " |",
             "|---:|" + "---:|" * len(EVALUATION_PARTS)]
    for row in rows:
        lines.append(f"| {row['images']:,} | " + " | ".join(f"{row['evaluation'].get(part, 0):.1f}"
                                                             for part in EVALUATION_PARTS) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma list of image counts")
    parser.add_argument("--steps", type=int, default=20, help="training steps per phase (batch 32)")
    parser.add_argument("--seed", type=int, default=0, help="of the synthetic images")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", dest="overrides",
                        help="more config fields for every run, e.g. --set eval_max_images=0")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    rows = []
    for count in sizes:
        rows.append(measure_size(count, args.steps, args.seed, args.overrides))
        print(table(rows)[-1], f"(images written in {rows[-1]['generate_s']:.0f} s)", flush=True)
    command = command_as_typed("scale")
    write_text(args.output, "\n".join([
        "# Scale: time and memory against the number of images\n",
        report_stamp(),
        f"- Command: `{command}`: per size, seeded demo images (half real, half fake) in a scratch folder, then "
        f"`deepfake_detection.py --preset tiny --models {MODEL} --set {MODEL}.width={WIDTH} "
        f"max_steps_per_epoch={args.steps}` with one epoch per phase, in a fresh process (1 torch thread, as "
        f"`tiny` sets)",
        "- Columns: the images split 80/20 into training and validation, and the validation sample the attack "
        "and corruption sweeps measure (`eval_max_images`); seconds per 1,000 images of each stage (a training "
        "stage is its capped steps plus one scoring of every validation image, so the seconds of one training "
        "step, without the scoring, beside them); the run's peak resident memory; the evaluation's share of the "
        "stages' time\n",
        *table(rows), "",
        "Evaluation, seconds of each part (both checkpoints):\n",
        *evaluation_table(rows), "",
    ]))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
