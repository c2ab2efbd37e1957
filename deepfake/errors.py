"""Errors the user can fix: their message is one line naming the file or option and the fix."""
import sys
from typing import Callable


class DeepfakeError(Exception):
    """Base of every error the command-line scripts report as one line instead of a traceback."""

    exit_status = 2  # what the script exits with


class ConfigError(DeepfakeError, ValueError):
    """An unknown preset, model or config field."""


class CheckpointError(DeepfakeError):
    """A checkpoint is missing, unreadable or does not match the model definition."""


def report_errors(command: Callable[[], object], interrupted: str = "nothing was written") -> int:
    """Run a script's work; a user-fixable error becomes one line on stderr and its exit status (2 unless the
    error class says otherwise), Ctrl-C one line saying ``interrupted`` (what is kept) and exit status 130."""
    try:
        command()
    except DeepfakeError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        print(f"\ninterrupted: {interrupted}", file=sys.stderr)
        return 130
    return 0
