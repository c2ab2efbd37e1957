"""Errors the user can fix: their message is one line naming the file or option and the fix."""
import sys
from typing import Callable


class DeepfakeError(Exception):
    """Base of every error the command-line scripts report as one line instead of a traceback."""


class ConfigError(DeepfakeError, ValueError):
    """An unknown preset, model or config field."""


def report_errors(command: Callable[[], object]) -> int:
    """Run a script's work; a user-fixable error becomes one line on stderr and exit status 2."""
    try:
        command()
    except DeepfakeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
