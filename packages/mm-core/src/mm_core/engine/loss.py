"""Loss of one micro-batch with the global token counting of each loss type.

Before a step runs, ``prepare_window`` computes for every micro-batch of the accumulation window
its shifted targets, token weights (from the loss type) and the denominator D (its
``normalize`` rule: counted across accumulation steps and data-parallel ranks with one
all-reduce). A micro-batch contributes ``sum(w * ce) / D / GA``; data parallel averages the
gradients, so the step optimises the mean over ranks and accumulation steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from mm_core.contracts import StageModel
from mm_core.engine.aux_loss import with_aux_loss
from mm_core.engine.model_setup import output_weight
from mm_core.losses.cross_entropy import sample_ids_for, shift_labels, weighted_ce_sum
from mm_core.nn.vocab_padding import VocabPadding, head_padding, padding_of
from mm_core.specs import NORMALIZE_MODES, LossSpec


@dataclass
class MicroBatch:
    """One micro-batch plus what its loss needs; ``stats`` collects detached values for logging."""

    batch: dict[str, Any]
    targets: torch.Tensor
    weights: torch.Tensor
    denominator: float
    scale: float  # 1 / grad_accum
    valid_tokens: int
    samples: int
    positions: int  # non-padding positions the model runs over (what compute and MFU scale with)
    stats: dict[str, Any] = field(default_factory=dict)  # detached values (tensors) for logging
    cp_scale: float = 1.0  # context parallel: this rank's share of the loss x cp (engine/context_parallel.py)


def _to(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _positions(batch: Mapping[str, Any]) -> int:
    """Non-padding positions of a micro-batch (attention mask, else packed segments, else all)."""
    if batch.get("attention_mask") is not None:
        return int(batch["attention_mask"].sum())
    if batch.get("segment_ids") is not None:
        return int((batch["segment_ids"] >= 0).sum())
    return int(batch["input_ids"].numel())


def denominators(normalize: str, sums: torch.Tensor, rank_mean: torch.Tensor) -> list[float]:
    """D of each micro-batch of a window from this rank's weight sums and their mean over ranks."""
    ga = len(sums)
    if normalize == "none":
        return [1.0] * ga
    if normalize == "micro_batch":
        return [float(s) for s in sums]
    if normalize == "rank_mean":
        return [float(s) for s in rank_mean]
    if normalize == "rank_mean_window":
        return [float(rank_mean.sum()) / ga] * ga
    raise ValueError(f"unknown normalize rule '{normalize}'; valid: {', '.join(NORMALIZE_MODES)}")


def prepare_window(window: list[Mapping[str, Any]], spec: LossSpec, device: torch.device,
                   dp_group: dist.ProcessGroup | None, dp: int) -> list[MicroBatch]:
    """Targets, weights and denominators of every micro-batch of this rank's window."""
    ga = len(window)
    prepared = []
    for b in window:
        targets = shift_labels(b["labels"])
        valid = targets != -100
        seg = b.get("segment_ids")
        if seg is not None:  # a target belongs to the sample of the position that predicts it
            valid = valid & (seg >= 0)
        weights = spec.token_weights(valid, sample_ids_for(targets, seg))
        samples = int(b["num_samples"]) if "num_samples" in b else int(targets.shape[0])
        prepared.append((b, targets, weights.float(), int(valid.sum()), samples, _positions(b)))
    sums = torch.tensor([p[2].sum().item() for p in prepared], dtype=torch.float64)
    rank_mean = sums
    if spec.normalize in ("rank_mean", "rank_mean_window") and dp > 1:
        rank_mean = sums.clone()
        dist.all_reduce(rank_mean, group=dp_group)  # gloo and nccl both take float64 sums
        rank_mean /= dp
    denoms = denominators(spec.normalize, sums, rank_mean)
    out = []
    for (b, targets, weights, n_valid, samples, positions), denom in zip(prepared, denoms):
        out.append(MicroBatch(_to(b, device), targets.to(device), weights.to(device), denom, 1.0 / ga,
                              n_valid, samples, positions))
    return out


class LossComputer:
    """The last stage's loss: LM head applied (full or chunked) inside the stage's forward."""

    def __init__(self, compute_mode: str, chunk_size: int, router_aux_loss_coef: float = 0.0):
        self.compute_mode, self.chunk_size = compute_mode, chunk_size
        self.router_aux_loss_coef = router_aux_loss_coef
        self._has_padding: dict[int, bool] = {}  # per stage model: does any module pad its vocabulary

    def _padding(self, model: StageModel, weight: torch.Tensor) -> VocabPadding | None:
        key = id(model)
        if key not in self._has_padding:
            self._has_padding[key] = any(padding_of(m) is not None for m in model.modules())
        return head_padding(model, weight) if self._has_padding[key] else None

    def __call__(self, hidden: torch.Tensor, mb: MicroBatch, model: StageModel) -> torch.Tensor:
        w = output_weight(model)
        total = weighted_ce_sum(hidden, w, mb.targets, mb.weights.to(torch.float32),
                                compute_mode=self.compute_mode, chunk_size=self.chunk_size,
                                vocab_padding=self._padding(model, w))
        loss = total / mb.denominator if mb.denominator > 0 else total * 0.0
        mb.stats["loss"] = loss.detach() * mb.scale  # a tensor: read once per step, not a sync per micro-batch
        loss = loss * mb.cp_scale
        loss = with_aux_loss(loss, model, self.router_aux_loss_coef, mb)  # the final loss: engine/aux_loss.py
        return loss * mb.scale
