"""Exceptions with messages that name the offending file or config key."""

from __future__ import annotations


class QaclimsError(Exception):
    """Base class of the project's user-facing errors."""


class ConfigError(QaclimsError, ValueError):
    """A config value is missing, unknown or of the wrong type; the message names the key."""


class DataError(QaclimsError, ValueError):
    """An input file is missing, unreadable or inconsistent; the message names the file."""
