"""Error types users see: each message names the file, key or field at fault and what to do."""

from __future__ import annotations


class MMError(Exception):
    """Base class of mm's user-facing errors."""


class DuplicateRegistrationError(MMError):
    """Two plugins registered the same key."""


class UnknownKeyError(MMError, LookupError):
    """A model, converter, formatter, loss or kernel that no loaded plugin provides."""


class ConfigError(MMError, ValueError):
    """A configuration value is missing, unknown or of the wrong type."""
