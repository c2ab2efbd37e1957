"""The measuring half of ``benchmarks/gpu_check.sh``: one pipeline or predict.py run in this process, recorded
as a JSON line (wall time, peak GPU memory, each model's precision, images/s and validation accuracy), then
``benchmarks/GPU.md`` written from those lines.

    python -m benchmarks.gpu_check images 20000 DIR              # synthetic PNGs for predict.py
    python -m benchmarks.gpu_check train LINES LABEL -- ARGS     # deepfake_detection.py ARGS
    python -m benchmarks.gpu_check predict LINES LABEL -- ARGS   # predict.py ARGS
    python -m benchmarks.gpu_check report LINES benchmarks/GPU.md
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import REPO, report_stamp
from deepfake.io import write_text


def write_images(count: int, folder: Path, size: int = 32, seed: int = 0) -> None:
    """``count`` seeded noise-and-gradient PNGs: predict.py's load, score and write path, not its accuracy."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float32)[None, :, None]
    for i in range(count):
        image = 0.5 * rng.integers(0, 256, (size, size, 3)) + 0.5 * ramp * rng.random(3)
        cv2.imwrite(str(folder / f"{i}.png"), image.astype(np.uint8))


def measure(kind: str, args: list[str]) -> dict:
    """Run deepfake_detection.py (``train``) or predict.py (``predict``) with ``args`` here; its exit status,
    wall seconds and peak GPU memory."""
    sys.path.insert(0, str(REPO))
    if kind == "train":
        from deepfake_detection import main
    else:
        from predict import main
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    status = main(args)
    return {"status": status, "wall_s": time.perf_counter() - started,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None}


def run_summary(checkpoint_dir: Path) -> dict:
    """Per model and phase: the precision that ran and why, images/s and validation accuracy; the run's stages."""
    results = json.loads((checkpoint_dir / "results.json").read_text())
    models = {}
    for name, entry in results.get("models", {}).items():
        models[name] = {phase: {"precision": entry.get("precision", {}).get(phase),
                                "why": entry.get("precision_why", {}).get(phase),
                                "images_per_second": entry.get("images_per_second", {}).get(phase),
                                "val_accuracy": entry.get("val", {}).get("base" if phase == "base" else "final",
                                                                         {}).get("accuracy")}
                        for phase in ("base", "finetune")}
    return {"models": models, "timings": results.get("timings", {}), "data_dir": results.get("data", {}).get("data_dir")}


def _value(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def card() -> str:
    """GPU name, compute capability, driver, torch and CUDA versions, CPU cores."""
    if not torch.cuda.is_available():
        return f"no GPU visible; torch {torch.__version__}"
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        driver = "unknown"
    major, minor = torch.cuda.get_device_capability()
    return (f"{torch.cuda.get_device_name()} (compute capability {major}.{minor}, "
            f"{torch.cuda.get_device_properties(0).total_memory / 2 ** 30:.0f} GiB), driver {driver}, "
            f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.get_num_threads()} CPU threads")


def _fmt(value, digits: int = 0) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def report(lines: Path, out: Path, budget_s: str) -> None:
    rows = [json.loads(line) for line in lines.read_text().splitlines() if line.strip()] if lines.exists() else []
    table = ["| run | model | phase | precision | img/s | val acc | run wall s | peak GPU MiB |", "|---|---|---|---|---:|---:|---:|---:|"]
    notes = []
    for row in rows:
        if row.get("skipped"):
            table.append(f"| {row['label']} | skipped: {row['skipped']} | | | | | | |")
            continue
        wall, peak = _fmt(row.get("wall_s")), _fmt(row.get("peak_gpu_mb"))
        if row["kind"] == "predict":
            rate = row["images"] / row["wall_s"] if row.get("wall_s") else None
            table.append(f"| {row['label']} | ensemble | predict.py, {row['images']} images | float32 | {_fmt(rate)} "
                         f"| | {wall} | {peak} |")
            continue
        for name, phases in row.get("models", {}).items():
            for phase, got in phases.items():
                table.append(f"| {row['label']} | {name} | {phase} | {got['precision']} | "
                             f"{_fmt(got['images_per_second'])} | {_fmt(got['val_accuracy'], 3)} | {wall} | {peak} |")
                notes.append(f"{row['label']} {name} {phase}: {got['why']}")
        if row.get("status"):
            table.append(f"| {row['label']} | exit status {row['status']} | | | | | {wall} | {peak} |")
    text = "\n".join([
        "# One GPU: the pipeline's speed, memory and accuracy per card and precision",
        "",
        "Written by `bash benchmarks/gpu_check.sh` (`benchmarks/gpu_check.py`); rerun it on another card to compare.",
        "",
        report_stamp(),
        f"- Card: {card()}",
        f"- Data: {next((r.get('data_dir') for r in rows if r.get('data_dir')), 'none trained')}; "
        f"time budget {budget_s} s for the whole check, runs in the order below, the rest skipped once it is spent",
        "",
        "img/s: training images a second in that phase (steps only); val acc: the phase's kept weights on the "
        "validation split; run wall s and peak GPU MiB: the whole command (training, evaluation, figures).",
        "",
        *table,
        "",
        "Why each precision (results.json's `precision_why`):",
        "",
        *[f"- {note}" for note in dict.fromkeys(notes)],
        "",
    ])
    write_text(out, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["images", "train", "predict", "report", "skip"])
    parser.add_argument("operands", nargs="*")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args, rest = parser.parse_args(argv[:split]), argv[split + 1:]  # after "--": the measured command's own
    if args.command == "images":
        write_images(int(args.operands[0]), Path(args.operands[1]))
        return
    lines = Path(args.operands[0])
    if args.command == "report":
        report(lines, Path(args.operands[1]), args.operands[2] if len(args.operands) > 2 else "?")
        return
    label = args.operands[1]
    if args.command == "skip":
        row = {"label": label, "kind": "skip", "skipped": " ".join(args.operands[2:])}
    else:
        row = {"label": label, "kind": args.command, "args": rest, **measure(args.command, rest)}
        if args.command == "train" and (Path(_value(rest, "--checkpoint-dir")) / "results.json").exists():
            row.update(run_summary(Path(_value(rest, "--checkpoint-dir"))))
        if args.command == "predict":
            row["images"] = sum(1 for _ in Path(rest[0]).glob("*.png"))
    with lines.open("a") as file:
        file.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "models"}))


if __name__ == "__main__":
    main()
