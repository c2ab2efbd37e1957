"""Training-step speed of each model as the ``full`` preset builds it, eager or compiled, float32 or bfloat16.

    python -m benchmarks.step_speed            # all three models, about 10 minutes on 2 cores
    python -m benchmarks.step_speed --models resnet_se --seconds 5

The CPU-speed levers of benchmarks/LEVERS.md (bf16 autocast per model, round 7; ``torch.compile``,
round 13) rest on these numbers. A compiled model pays for compilation before its first training step
and again in evaluation mode, so the table shows both costs next to the steady rate; each variant runs
in a fresh process with an empty compiler cache, as a first run would. Random pixels, AdamW and the
preset's batch size and label smoothing: a phase-1 step costs the same whatever the images show.
Writes benchmarks/STEP_SPEED.md.
"""
from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import REPO, command_as_typed, report_stamp
from deepfake.config import MODEL_NAMES, Config, make_config
from deepfake.io import write_text
from deepfake.models import build_from_config
from deepfake.precision import native_bf16
from deepfake.runtime import setup_runtime

OUTPUT = REPO / "benchmarks" / "STEP_SPEED.md"
EVAL_IMAGES = 196  # the benchmark's validation split: one evaluation batch


def step_speed(name: str, config: Config, device: torch.device, bf16: bool, compiled: bool,
               seconds: float) -> dict[str, float]:
    """Seconds to the first training step and to the first evaluation batch, and training images per second."""
    torch.manual_seed(config.seed)
    model = build_from_config(name, config).to(device)
    run = torch.compile(model) if compiled else model
    recipe = config.member(name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    x = torch.rand(config.batch_size, 3, config.image_size, config.image_size, device=device)
    y = torch.randint(0, 2, (config.batch_size,), device=device)

    def train_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(run(x), y, label_smoothing=recipe.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    started = time.perf_counter()
    train_step()
    first_step = time.perf_counter() - started
    train_step()  # warm caches (and, compiled, any second graph) before timing
    images, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        train_step()
        images += config.batch_size
    rate = images / (time.perf_counter() - started)
    model.eval()
    started = time.perf_counter()
    with torch.no_grad():
        run(torch.rand(EVAL_IMAGES, 3, config.image_size, config.image_size, device=device))
    return {"first_step_s": first_step, "images_per_second": rate, "first_eval_s": time.perf_counter() - started}


def measure_in_subprocess(variant: str, seconds: float) -> dict[str, float]:
    """One MODEL:PRECISION:MODE variant in a fresh process, so no kernel compiled for another one serves it."""
    done = subprocess.run([sys.executable, __file__, "--variant", variant, "--seconds", str(seconds)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODEL_NAMES), help="comma list")
    parser.add_argument("--seconds", type=float, default=15.0, help="timed training per variant")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # MODEL:PRECISION:MODE, one measurement as JSON
    args = parser.parse_args()
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime" on every compile
    config = make_config("full")
    device = setup_runtime(config)
    if args.variant:
        cache = tempfile.mkdtemp(prefix="step_speed_inductor_")  # compile cold, as a first run does
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # read when torch compiles, not at import
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
        name, precision, mode = args.variant.split(":")
        print(json.dumps(step_speed(name, config, device, precision == "bfloat16", mode == "compiled", args.seconds)))
        return 0
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODEL_NAMES))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODEL_NAMES)}")
    precisions = ["float32", "bfloat16"] if native_bf16(device) else ["float32"]
    rows = []
    for name in models:
        for precision in precisions:
            for mode in ("eager", "compiled"):
                speed = measure_in_subprocess(f"{name}:{precision}:{mode}", args.seconds)
                rows.append(f"| {name} | {precision} | {mode} | {speed['images_per_second']:.0f} "
                            f"| {speed['first_step_s']:.1f} | {speed['first_eval_s']:.1f} |")
                print(rows[-1], flush=True)
    in_full = ", ".join(name for name in config.members if config.member(name).bf16)
    command = command_as_typed("step_speed")
    write_text(args.output, "\n".join([
        "# Training-step speed\n",
        report_stamp(),
        f"- Command: `{command}` (models as the `full` preset builds them, batch {config.batch_size}, "
        f"{config.image_size}x{config.image_size}, {torch.get_num_threads()} threads; `full` trains "
        f"{in_full} in bfloat16, every model eager)",
        "- Columns: steady training images per second; seconds to the first training step and to the first "
        f"evaluation batch of {EVAL_IMAGES} images, where a compiled model compiles (each row in a fresh process "
        "with an empty compiler cache, as a first run has)\n",
        "| model | precision | mode | train img/s | first step s | first eval s |",
        "|---|---|---|---:|---:|---:|",
        *rows, "",
    ]))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
