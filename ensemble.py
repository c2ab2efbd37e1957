"""Average the trained detectors into submission.json: `python ensemble.py` after `python deepfake_detection.py`."""
from __future__ import annotations

import argparse
import sys

from deepfake.config import WEIGHT_SCHEMES
from deepfake.errors import report_errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint-dir", default="checkpoints", help="the training run's folder (results.json)")
    parser.add_argument("--test-dir", default=None, help="images to predict (default: test/ of the run's data dir)")
    parser.add_argument("--output", default="submission.json", help="also writes <name>.meta.json next to it")
    parser.add_argument("--weights", default="accuracy", choices=WEIGHT_SCHEMES,
                        help="weigh each model equally, or by its validation accuracy, ROC-AUC or accuracy's log-odds "
                             "(default: accuracy)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="fake probability from which an image is called fake "
                             "(default: the cut with the best validation accuracy, nearest 0.5 among ties)")
    parser.add_argument("--checkpoints", default=None,
                        help="comma list of .pt files (default: every final checkpoint of the run)")
    parser.add_argument("--probabilities", default=None, metavar="FILE",
                        help="also write per-image, per-model fake probabilities as CSV")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)
    checkpoints = [c.strip() for c in args.checkpoints.split(",") if c.strip()] if args.checkpoints else None
    from deepfake.ensemble import run_ensemble  # torch loads here, so --help and usage errors stay instant

    return report_errors(lambda: run_ensemble(
        args.checkpoint_dir, test_dir=args.test_dir, output=args.output, scheme=args.weights,
        threshold=args.threshold, checkpoints=checkpoints, probabilities=args.probabilities, device=args.device,
    ))


if __name__ == "__main__":
    sys.exit(main())
