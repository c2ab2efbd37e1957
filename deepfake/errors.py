"""Errors the user can fix: their message is one line naming the file or option and the fix."""
import sys
from typing import Callable


class DeepfakeError(Exception):
    """Base of every error the command-line scripts report as one line instead of a traceback."""

    exit_status = 2  # what the script exits with


class ConfigError(DeepfakeError, ValueError):
    """An unknown preset, model or config field."""


def report_errors(command: Callable[[], object]) -> int:
    """Run a script's work; a user-fixable error becomes one line on stderr and its exit status (2 unless the
    error class says otherwise)."""
    try:
        command()
    except DeepfakeError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_status
    return 0
