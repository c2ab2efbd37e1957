"""Train and evaluate the three detectors end to end: `python deepfake_detection.py --preset quick`."""
from __future__ import annotations

import argparse
import sys

from deepfake.cli import add_config_arguments, config_from_args, default_preset_notice
from deepfake.errors import report_errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_arguments(parser)
    parser.add_argument("--force", action="store_true", help="retrain models whose checkpoints match the config")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="re-evaluate the run in --checkpoint-dir as it was trained, no training (of the other "
                             "flags only --device and --models apply; figures go beside the run)")
    args = parser.parse_args(argv)
    notice = None if args.evaluate_only else default_preset_notice(args)
    if notice:
        print(notice, file=sys.stderr)
    from deepfake.pipeline import run  # torch loads here, so --help and usage errors stay instant

    return report_errors(lambda: run(
        config_from_args(args), force=args.force, evaluate_only=args.evaluate_only,
        explicit_data_dir=args.data_dir is not None,
    ), interrupted="every finished phase is saved in the checkpoint folder; the same command resumes from there")


if __name__ == "__main__":
    sys.exit(main())
