"""Loss types: per-token weights plus a normalisation rule (see ``LossSpec``)."""

from mm_core.losses.types import BUILTIN_LOSSES, NORMALIZE_MODES, weighted_loss

__all__ = ["BUILTIN_LOSSES", "NORMALIZE_MODES", "weighted_loss"]
