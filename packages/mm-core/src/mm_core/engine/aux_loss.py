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

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from mm_core.contracts import StageModel, total_aux_loss
from mm_core.errors import ConfigError
from mm_core.family.hf_config import text_config

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


def resolve_aux_loss_coef(configured: float | None, hf_config: Mapping[str, Any]) -> tuple[float, str | None]:
    """``training.router_aux_loss_coef`` to use and a line saying where it came from (None: nothing to
    say, a model without one). Unset (None) takes the model config's own ``router_aux_loss_coef`` (its
    text section's, else the top level's: GLM-4.5V ships 1e-4), as transformers trains it; a number
    overrides it, 0 turns the loss off. Models without a router (no such field) get 0."""
    own = text_config(hf_config).get("router_aux_loss_coef")
    own = None if own is None else float(own)
    if configured is None:
        if own is None:
            return 0.0, None
        return own, (f"training.router_aux_loss_coef: {own:g}, the model config's router_aux_loss_coef "
                     "(set training.router_aux_loss_coef to override it; 0 turns the router balance loss off)")
    configured = float(configured)
    if configured < 0:
        raise ConfigError(f"training.router_aux_loss_coef: must be >= 0, got {configured:g} (0 turns the router "
                          "balance loss off; leave it unset for the model config's value)")
    if own is None:
        return configured, None
    return configured, f"training.router_aux_loss_coef: {configured:g} from the config (the model config's is {own:g})"


def announce(note: str | None) -> None:
    """Print ``note`` once per run: on global rank 0 of the workers (a launcher validating the config
    before it starts them has no process group and stays quiet)."""
    if note and dist.is_initialized() and dist.get_rank() == 0:
        print(note, flush=True)
