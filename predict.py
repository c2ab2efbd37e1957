"""Call any image or folder real or fake with the ensemble, with the evidence: `python predict.py my_photos/`."""
from __future__ import annotations

import argparse
import sys

from deepfake.cli import add_ensemble_arguments, ensemble_options
from deepfake.errors import report_errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image files, or folders searched recursively for PNG, JPEG, WebP and BMP files")
    add_ensemble_arguments(parser)
    parser.add_argument("--output", default=None, metavar="FILE",
                        help="per-image probabilities (ensemble and each model), call and flags, as .csv or .json")
    parser.add_argument("--explain", default=None, metavar="DIR",
                        help="one figure per image (the first 100) with each model's Grad-CAM of the call")
    args = parser.parse_args(argv)
    from deepfake.predict import run_predict  # torch loads here, so --help and usage errors stay instant

    return report_errors(lambda: run_predict(args.paths, output=args.output, explain_dir=args.explain,
                                             **ensemble_options(args)))


if __name__ == "__main__":
    sys.exit(main())
