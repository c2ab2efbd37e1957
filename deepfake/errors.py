"""Errors the user can fix: their message is one line naming the file or option and the fix."""


class DeepfakeError(Exception):
    """Base of every error the command-line scripts report as one line instead of a traceback."""


class ConfigError(DeepfakeError, ValueError):
    """An unknown preset, model or config field."""
