"""Errors of reading and converting checkpoints; each names the file, stage, key or config field at fault."""

from __future__ import annotations

from mm_core.errors import ConfigError, MMError

__all__ = ["ConfigError", "ConversionError", "KeyMismatchError", "TargetExistsError"]


class ConversionError(MMError):
    """A checkpoint cannot be converted as asked."""


class KeyMismatchError(ConversionError):
    """A checkpoint's keys do not match what the rules expect (missing / unexpected)."""


class TargetExistsError(ConversionError):
    """The output directory exists and is not empty (pass ``--cfg.overwrite true`` to replace it)."""
