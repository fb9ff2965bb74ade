"""Auxiliary losses (an MoE router's balance loss) added to the final loss of a micro-batch.

The last pipeline stage's loss is ``main + coef * aux`` whatever the loss type and compute mode:
``main`` is the loss type's ``sum(w * ce) / D`` (full or chunked logits), ``aux`` the stage
model's ``aux_losses()`` of this micro-batch's forward, which covers every MoE layer of the model
(a family passes earlier stages' router statistics along the pipeline: see ``mm_glm.moe_aux``).
Both are then scaled by ``1 / grad_accum`` and data parallel averages the gradients, so the step
optimises the mean over micro-batches and ranks of ``main + coef * aux``: what one process
computes over the same micro-batches. The logged loss is this final loss; the aux term alone is
kept in ``stats["router_aux_loss"]``.

Under context parallel each cp rank holds a share of the cross-entropy but the *whole* aux loss
(the model sums its router statistics over the cp group: ``ContextParallel.share_sum``, gradient
to the rank's own share). Like the cross-entropy share, the term is scaled by cp for backward
(FSDP2 averages over the dp x cp ranks); the trainer sums the cp ranks' logged losses, so each
logs ``1 / cp`` of the term.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from mm_core.contracts import StageModel, total_aux_loss

if TYPE_CHECKING:
    from mm_core.engine.loss import MicroBatch


def with_aux_loss(loss: torch.Tensor, model: StageModel, coef: float, mb: MicroBatch) -> torch.Tensor:
    """``loss + coef * aux`` (``loss`` unchanged without a coefficient or without auxiliary losses)."""
    if not coef:
        return loss
    aux = total_aux_loss(model)
    if aux is None:
        return loss
    term = coef * aux.to(loss.dtype)
    mb.stats["router_aux_loss"] = aux.detach()
    if "loss" in mb.stats:  # the logged loss is the final one (its cp shares are summed)
        mb.stats["loss"] = mb.stats["loss"] + term.detach() * (mb.scale / mb.cp_scale)
    return loss + term * mb.cp_scale
