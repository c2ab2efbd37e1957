"""Peak memory of predict.py on 1,000 and on 20,000 demo-size images (issue #31: within twice).

    python -m benchmarks.predict_memory                         # trains a tiny run first, about 5 minutes on 2 cores
    python -m benchmarks.predict_memory --checkpoint-dir checkpoints --counts 1000,20000

predict.py reads, scores and writes its images one batch at a time, so its memory should not grow
with their number. This writes each count's images (32x32 PNG copies of the demo set's, in nested
folders of 1,000) to a scratch folder, trains a tiny run there unless --checkpoint-dir names one, runs
`python predict.py FOLDER --output predictions.csv` once per count in a fresh process, and reads that
process's own peak resident memory from the kernel (ru_maxrss of wait4), next to that of a process that only
imports predict.py's modules. Writes benchmarks/PREDICT_MEMORY.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, report_stamp
from deepfake.data import list_image_files
from deepfake.demo_data import build_demo_dataset
from deepfake.io import write_text
from deepfake.pipeline import load_run_config

REPORT = Path(__file__).resolve().parent / "PREDICT_MEMORY.md"
PER_FOLDER = 1000  # images per subfolder of a count's tree
ALLOWED_RATIO = 2.0  # the bound: peak memory at the largest count within twice that at the smallest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint-dir", default=None, help="a finished training run (default: train a tiny one)")
    parser.add_argument("--counts", default="1000,20000", help="comma list of image counts, smallest first")
    args = parser.parse_args(argv)
    counts = sorted(int(c) for c in args.counts.split(","))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    with tempfile.TemporaryDirectory(prefix="predict_memory_") as scratch:
        scratch = Path(scratch)
        demo = build_demo_dataset(scratch / "demo")
        checkpoint_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else train_tiny_run(scratch, demo, env)
        sources = [f for folder in ("train/real", "train/fake", "test") for f in list_image_files(demo / folder)]
        rows = [{"count": 0, **peak_memory([sys.executable, "-c", "import deepfake.predict"], env)}]
        for count in counts:
            folder = write_images(scratch / f"images_{count}", sources, count)
            rows.append(measure(folder, count, checkpoint_dir, scratch / f"predictions_{count}.csv", env))
            shutil.rmtree(folder)
            print(f"{count} images: peak {rows[-1]['peak_mib']:.0f} MiB, {rows[-1]['seconds']:.1f} s", flush=True)
        write_report(rows, checkpoint_dir, args)
    print(f"wrote {REPORT}")
    return 0


def train_tiny_run(scratch: Path, demo: Path, env: dict) -> Path:
    run = scratch / "run"
    peak_memory([sys.executable, "deepfake_detection.py", "--preset", "tiny", "--data-dir", str(demo),
                 "--checkpoint-dir", str(run / "checkpoints"), "--viz-dir", str(run / "visualizations"),
                 "--generated-dir", str(run / "generated")], env)
    return run / "checkpoints"


def write_images(folder: Path, sources: list[Path], count: int) -> Path:
    """``count`` copies of the demo images, cycled, named 0.png.. in subfolders of PER_FOLDER."""
    for i in range(count):
        target = folder / f"{i // PER_FOLDER:03d}" / f"{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sources[i % len(sources)], target)
    return folder


def measure(folder: Path, count: int, checkpoint_dir: Path, output: Path, env: dict) -> dict:
    """Run predict.py on ``folder`` in a fresh process: its own peak resident memory and time."""
    measured = peak_memory([sys.executable, "predict.py", str(folder), "--checkpoint-dir", str(checkpoint_dir),
                            "--output", str(output), "--device", "cpu"], env)
    scored = sum(1 for _ in output.open()) - 1
    if scored != count:
        raise SystemExit(f"predict.py wrote {scored} rows for {count} images")
    return {"count": count, **measured}


def peak_memory(command: list[str], env: dict) -> dict:
    """Run ``command`` in the repository: its own peak resident memory (MiB) and wall time; its output on failure."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # this child's rusage alone, not every child's maximum
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        if process.returncode != 0:
            log.seek(0)
            raise SystemExit(f"{' '.join(command)} failed:\n{log.read().decode(errors='replace')[-3000:]}")
    return {"peak_mib": usage.ru_maxrss / 1024, "seconds": seconds}


def write_report(rows: list[dict], checkpoint_dir: Path, args: argparse.Namespace) -> None:
    config = load_run_config(checkpoint_dir)
    imports, rows = rows[0], rows[1:]
    ratio = rows[-1]["peak_mib"] / rows[0]["peak_mib"]
    command = "python -m benchmarks.predict_memory" + (
        f" --checkpoint-dir {args.checkpoint_dir}" if args.checkpoint_dir else "") + (
        f" --counts {args.counts}" if args.counts != "1000,20000" else "")
    run = f"the run in {args.checkpoint_dir}" if args.checkpoint_dir else "a tiny run trained on the demo data"
    lines = [
        "# predict.py: peak memory against the number of images",
        "",
        report_stamp(),
        f"- Command: `{command}` ({run}: {', '.join(config.models)}; "
        f"CPU threads: {config.threads or os.cpu_count()})",
        "- Each count: 32x32 PNG copies of the demo images in nested folders of 1,000, scored by "
        "`python predict.py FOLDER --output predictions.csv --device cpu` in a fresh process; peak resident memory "
        "is that process's ru_maxrss (the kernel's high-water mark, from wait4)",
        "",
        "| images | peak memory (MiB) | wall time (s) | images/s |",
        "|---:|---:|---:|---:|",
        f"| none: `python -c \"import deepfake.predict\"` | {imports['peak_mib']:.0f} | {imports['seconds']:.1f} | |",
        *(f"| {r['count']:,} | {r['peak_mib']:.0f} | {r['seconds']:.1f} | {r['count'] / r['seconds']:.0f} |"
          for r in rows),
        "",
        f"Peak memory at {rows[-1]['count']:,} images is {ratio:.2f}x that at {rows[0]['count']:,} "
        f"({'within' if ratio <= ALLOWED_RATIO else 'above'} the issue's bound of {ALLOWED_RATIO:g}x). "
        "Most of the peak is reached before the first image is read: the libraries' import (first row: torch, "
        "timm, matplotlib, ...), the models and the validation split scored for the cut. Wall times include "
        "starting Python and that loading, and vary with the shared host's load.",
        "",
    ]
    write_text(REPORT, "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
