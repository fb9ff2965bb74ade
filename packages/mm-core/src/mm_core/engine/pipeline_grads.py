"""Every stage input that requires a gradient gets one, so each torch's pipelining can send it.

What ``torch.distributed.pipelining`` does with a received input whose gradient is None depends
on the release: torch 2.11 marks every received buffer ``requires_grad`` and raises "[s] for
chunk c has gradients None and is expecting to send gradients to stage s-1"; later releases send
zeros in its place. A pipeline stage often has such inputs: the micro-batch index and row count
travel with the hidden states but are never differentiated, a frozen stage ends its backward at
its own output, and a text-only micro-batch may not touch the visual rows it received.
``grad_anchor`` ties those inputs to the stage output with a zero gradient, the same on every
release (a used input's real gradient is summed with the zero, so numbers do not change).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class _Anchor(torch.autograd.Function):
    """Identity on ``out``; backward hands ``out`` its gradient and each anchored input zeros."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.shapes = [(t.shape, t.dtype, t.device) for t in inputs]
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        zeros = tuple(torch.zeros(s, dtype=d, device=dev) for s, d, dev in ctx.shapes)
        return (grad, *zeros)


def grad_anchor(out: torch.Tensor, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``out``, with every input that requires grad given a (zero) gradient path through it."""
    needing = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    if not needing or not torch.is_grad_enabled():
        return out
    return _Anchor.apply(out, *needing)
