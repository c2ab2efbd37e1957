"""Average the trained detectors into submission.json: `python ensemble.py` after `python deepfake_detection.py`."""
from __future__ import annotations

import argparse
import sys

from deepfake.cli import add_ensemble_arguments, ensemble_options
from deepfake.errors import report_errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_ensemble_arguments(parser)
    parser.add_argument("--test-dir", default=None, help="images to predict (default: test/ of the run's data dir)")
    parser.add_argument("--output", default="submission.json", help="also writes <name>.meta.json next to it")
    parser.add_argument("--probabilities", default=None, metavar="FILE",
                        help="also write per-image, per-model fake probabilities as CSV")
    args = parser.parse_args(argv)
    from deepfake.submission import run_ensemble  # torch loads here, so --help and usage errors stay instant

    return report_errors(lambda: run_ensemble(
        test_dir=args.test_dir, output=args.output, probabilities=args.probabilities, **ensemble_options(args)))


if __name__ == "__main__":
    sys.exit(main())
