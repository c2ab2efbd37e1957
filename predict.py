"""Call any image or folder real or fake with the ensemble, with the evidence: `python predict.py my_photos/`."""
from __future__ import annotations

import argparse
import sys

from deepfake.config import WEIGHT_SCHEMES
from deepfake.errors import report_errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image files, or folders searched recursively for PNG, JPEG, WebP and BMP files")
    parser.add_argument("--checkpoint-dir", default="checkpoints", help="the training run's folder (results.json)")
    parser.add_argument("--checkpoints", default=None,
                        help="comma list of .pt files (default: every final checkpoint of the run)")
    parser.add_argument("--output", default=None, metavar="FILE",
                        help="per-image probabilities (ensemble and each model), call and flags, as .csv or .json")
    parser.add_argument("--explain", default=None, metavar="DIR",
                        help="one figure per image (the first 100) with each model's Grad-CAM of the call")
    parser.add_argument("--weights", default="accuracy", choices=WEIGHT_SCHEMES,
                        help="weigh each model equally or by its validation accuracy / ROC-AUC, as ensemble.py")
    parser.add_argument("--threshold", type=float, default=None,
                        help="fake probability from which an image is called fake "
                             "(default: the cut ensemble.py chooses on validation)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)
    checkpoints = [c.strip() for c in args.checkpoints.split(",") if c.strip()] if args.checkpoints else None
    from deepfake.predict import run_predict  # torch loads here, so --help and usage errors stay instant

    return report_errors(lambda: run_predict(
        args.paths, checkpoint_dir=args.checkpoint_dir, checkpoints=checkpoints, output=args.output,
        explain_dir=args.explain, scheme=args.weights, threshold=args.threshold, device=args.device,
    ))


if __name__ == "__main__":
    sys.exit(main())
