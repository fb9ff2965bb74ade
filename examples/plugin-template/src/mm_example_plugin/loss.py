"""The example loss type's token weights."""

from __future__ import annotations

import torch


def log_length_weights(valid: torch.Tensor, sample_ids: torch.Tensor) -> torch.Tensor:
    """Weight each valid token by 1/log(1 + n_b), n_b = valid tokens of its sample."""
    ids = sample_ids.clamp(min=0)
    mask = valid & (sample_ids >= 0)
    counts = torch.zeros(int(ids.max()) + 1 if ids.numel() else 1).index_add_(0, ids[mask], torch.ones(int(mask.sum())))
    return mask.float() / torch.log1p(counts[ids].clamp(min=1))
