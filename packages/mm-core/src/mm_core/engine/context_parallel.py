"""Context parallel (``parallel.cp``): the text decoder's sequence split over cp ranks.

Choice: all-gather of keys/values with load-balanced causal chunks (as torchtitan and Llama 3
train long context). The sequence is cut into ``2 cp`` equal chunks and rank ``r`` holds chunks
``r`` and ``2cp - 1 - r``, so every rank has the same causal work. Each attention layer
all-gathers K and V over the cp group (``context_parallel_attention``) and attends its queries
to them. Why not the alternatives, for now:

- ring attention (Megatron's ``megatron_cp_algo``) overlaps the K/V exchange with compute, which
  pays on fast links at 100k+ tokens; on gloo/CPU it is only more steps, and with GQA the K/V
  gathered here are a fraction of the activations anyway;
- all-to-all (Ulysses) needs ``heads % (tp x cp) == 0``, which InternViT-6B / odd-head models and
  tensor parallel with padded heads break.

What is split, and where: the whole batch reaches every cp rank of a data-parallel rank; the
vision towers run unsplit and the multimodal merge (vision features into the text embeddings)
and the rotary positions (mRoPE's 3 rows or 1-D) are computed on the full sequence. A forward
pre-hook on ``text_decoder`` then keeps only this rank's chunks of the hidden states and the
rotary tables; ``segment_ids`` stay whole so a packed sample attends only within itself across
ranks. The loss targets and token weights (computed with every loss type's global counts on the
full sequence, see ``loss.prepare_window``) are split the same way; a rank's loss is its share of
the micro-batch loss, and the shares add up. Gradients of parameters replicated over cp are
summed by FSDP2 over the flattened ``dp x cp`` mesh; it averages over ``dp x cp`` ranks, so each
cp rank's loss is scaled by ``cp`` for backward (``MicroBatch.cp_scale``). An MoE router's
auxiliary loss is of the whole sequence, like transformers' over the whole batch: the stage model
(which ``install`` gives a ``context_parallel`` attribute) sums its per-expert statistics over the
cp group with :meth:`ContextParallel.share_sum` (the total forward, the gradient to this rank's
own share), so every cp rank holds the same loss, scaled by cp for backward like the
cross-entropy share (``mm_core.engine.aux_loss``). Not split: the vision towers and the embedding output (every cp rank computes them whole,
then keeps its chunks); pipeline stages pass each rank's chunks on.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mm_core.engine.context_parallel_attention import context_parallel_attention, one_sample_per_row
from mm_core.errors import ConfigError


def chunk_positions(length: int, cp: int, rank: int, device: torch.device | None = None) -> torch.Tensor:
    """The sequence positions rank ``rank`` holds: chunks ``rank`` and ``2cp - 1 - rank`` of ``2 cp``."""
    if length % (2 * cp):
        raise ValueError(f"context parallel: a sequence of {length} tokens does not cut into 2 x cp = {2 * cp} "
                         "equal chunks; pad it to a multiple (the trainer does)")
    c = length // (2 * cp)
    first = torch.arange(rank * c, (rank + 1) * c, device=device)
    return torch.cat([first, first + (2 * cp - 1 - 2 * rank) * c])


class _ShareSum(torch.autograd.Function):
    """Forward: the sum over the group; backward: the gradient to this rank's own share unchanged."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:  # noqa: ANN001 - autograd ctx
        total = x.detach().clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001 - autograd ctx
        return grad, None


class ContextParallel:
    """This rank's place in the cp group and what the model and the loss need from it."""

    def __init__(self, group: dist.ProcessGroup, size: int, rank: int):
        self.group, self.size, self.rank = group, size, rank

    def split(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's two chunks of ``x`` along ``dim`` (the sequence)."""
        dim = dim % x.dim()
        return x.index_select(dim, chunk_positions(x.shape[dim], self.size, self.rank, x.device))

    def share_sum(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of ``x`` over the cp ranks, differentiable in this rank's own ``x`` only: a loss of
        the whole sequence's statistics, scaled by cp on every rank, then gets from FSDP2's mean over
        the cp ranks each rank's share of the gradient once (the sum's backward would count it cp times)."""
        return _ShareSum.apply(x, self.group)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segment_ids: torch.Tensor | None,
                  scale: float) -> torch.Tensor:
        """What ``DecoderAttention`` calls instead of the plain kernel under cp (``[B, H, 2c, D]``)."""
        return context_parallel_attention(q, k, v, segment_ids, scale, self.group, self.rank)

    def _split_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """``text_decoder(hidden, cos, sin, segment_ids, cache)``: keep this rank's chunks of the
        hidden states (whole on the stage with the embedding) and of the rotary tables."""
        hidden, cos, sin, segment_ids, *rest = args
        if hasattr(module, "embedding"):
            hidden = self.split(hidden, 1)
        if segment_ids is not None and one_sample_per_row(segment_ids):
            segment_ids = None  # decided once per forward, not in every layer
        return (hidden, self.split(cos, -2), self.split(sin, -2), segment_ids, *rest), kwargs

    def install(self, model: nn.Module, what: str) -> int:
        """Route ``model``'s text decoder through cp; returns how many attention layers it covers.

        The split hook goes first, ahead of tensor parallel's sequence-parallel one, which then
        shards this rank's chunks over tp.
        """
        from mm_core.family.decoder import DecoderAttention

        text = getattr(model, "text_decoder", None)
        if text is None:
            if getattr(getattr(model, "plan", None), "has_text", True):
                raise ConfigError(f"parallel.cp: {what} has no shared text_decoder (mm_core.family.decoder), "
                                  "the only decoder that runs context parallel; set parallel.cp 1")
            return 0
        layers = [m for m in text.modules() if isinstance(m, DecoderAttention)]
        n_layers = len(getattr(getattr(text, "decoder", None), "layers", []))
        if len(layers) != n_layers:
            raise ConfigError(f"parallel.cp: {what}'s text decoder has {n_layers} layers but {len(layers)} use the "
                              "shared DecoderAttention (mm_core.family.decoder), the only attention that runs "
                              "context parallel; set parallel.cp 1")
        for attn in layers:
            attn.context_parallel = self
        model.context_parallel = self  # a model's loss over the whole sequence (MoE router balance) reads it
        text.register_forward_pre_hook(self._split_inputs, with_kwargs=True, prepend=True)
        return len(layers)

    def split_micro_batches(self, mbs: list[Any]) -> None:
        """Targets and token weights of every micro-batch cut like the hidden states; the loss of
        each rank is scaled by cp for backward (FSDP2 averages over the dp x cp ranks)."""
        for mb in mbs:
            mb.targets = self.split(mb.targets, 1)
            mb.weights = self.split(mb.weights, 1)
            mb.cp_scale = float(self.size)


def cp_multiple(cp: int, tp: int, sequence_parallel: bool) -> int:
    """What a sequence length must be a multiple of: 2 cp chunks, each rank's pair of them split
    over tp under sequence parallel."""
    return 2 * cp * (tp if sequence_parallel else 1)
