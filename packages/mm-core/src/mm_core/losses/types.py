"""The five built-in loss types of data-and-loss.md, written as token weights + normalisation.

With per-token cross entropy ``ce`` (0 where the label is -100), ``n_b`` the valid tokens of
sample b, ``n`` those of the micro-batch and ``B`` its sample count:

- ``default``: sum ce / n (token mean inside each micro-batch);
- ``per_sample_loss``: sum_b (sum_t ce_bt / n_b) / B;
- ``per_token_loss``: sum ce / (mean over ranks of the window's tokens / GA); after GA and DP
  averaging this is the global batch's sum ce / all its valid tokens;
- ``token_loss``: sum ce / mean over ranks of n;
- ``square_loss``: sum w ce / mean over ranks of sum w, with w = 1/sqrt(n_b) (InternVL).
"""

from __future__ import annotations

import torch

from mm_core.specs import LossSpec

NORMALIZE_MODES = ("none", "micro_batch", "rank_mean", "rank_mean_window")


def valid_weights(valid: torch.Tensor, sample_ids: torch.Tensor) -> torch.Tensor:
    return valid.float()


def _per_sample_counts(valid: torch.Tensor, sample_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid-token count of each token's own sample, and the number of samples."""
    ids = torch.where(valid & (sample_ids >= 0), sample_ids, torch.zeros_like(sample_ids))
    num = int(sample_ids.max().item()) + 1 if sample_ids.numel() and sample_ids.max() >= 0 else 0
    counts = torch.zeros(max(num, 1), device=valid.device).index_add_(
        0, ids[valid & (sample_ids >= 0)], torch.ones(int((valid & (sample_ids >= 0)).sum()), device=valid.device)
    )
    return counts[ids], torch.tensor(float(num), device=valid.device)


def per_sample_weights(valid: torch.Tensor, sample_ids: torch.Tensor) -> torch.Tensor:
    own_count, num_samples = _per_sample_counts(valid, sample_ids)
    w = valid.float() / own_count.clamp(min=1)
    return w / num_samples.clamp(min=1)


def square_weights(valid: torch.Tensor, sample_ids: torch.Tensor) -> torch.Tensor:
    own_count, _ = _per_sample_counts(valid, sample_ids)
    return valid.float() / own_count.clamp(min=1).sqrt()


BUILTIN_LOSSES = (
    LossSpec("default", valid_weights, "micro_batch", "token mean inside each micro-batch"),
    LossSpec("per_sample_loss", per_sample_weights, "none", "mean of per-sample token means"),
    LossSpec("per_token_loss", valid_weights, "rank_mean_window", "global-batch token mean (GA/DP invariant)"),
    LossSpec("token_loss", valid_weights, "rank_mean", "sum over tokens / mean micro-batch tokens over ranks"),
    LossSpec("square_loss", square_weights, "rank_mean", "InternVL square averaging, w = 1/sqrt(n_b)"),
)


def weighted_loss(ce: torch.Tensor, weights: torch.Tensor, denominator: float | torch.Tensor) -> torch.Tensor:
    """The micro-batch loss ``sum(w * ce) / D``; a zero denominator gives zero (nothing to learn)."""
    total = (ce * weights).sum()
    if isinstance(denominator, torch.Tensor):
        return total / denominator.clamp(min=1e-12)
    return total / denominator if denominator > 0 else total * 0.0
