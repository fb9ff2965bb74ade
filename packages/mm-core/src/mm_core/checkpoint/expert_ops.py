"""Reversible transforms that stack a mixture-of-experts layer's per-expert HF tensors into the
grouped-GEMM operands of the mm layout (and split them back, bit-exact).

The Hub stores every expert's ``gate_proj``/``up_proj`` ``[I, H]`` and ``down_proj`` ``[H, I]``
(nn.Linear's ``[out, in]``). A grouped GEMM multiplies token rows by ``[E, K, N]`` weights, so:

- :class:`StackGateUp`: HF ``gate_0, up_0, gate_1, up_1, ...`` -> ``[E, H, 2I]``, expert ``e`` being
  ``[gate_e; up_e]`` transposed (a row times it gives ``[gate | up]``);
- :class:`StackDown`: HF ``down_0, down_1, ...`` -> ``[E, I, H]``, each transposed.

These moves are transposes, not whole rows, so ``rows_only`` is False. Each expert's slice depends on
that expert's tensors alone, so both are stacks (``blocks`` = experts): a conversion fills or splits
the stack a few experts at a time (``sub(n)``) and never holds a whole layer's experts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mm_core.checkpoint.ops import Shape, Transform


def _same(shapes: Sequence[Shape], what: str) -> Shape:
    first = tuple(shapes[0])
    if len(first) != 2 or any(tuple(s) != first for s in shapes):
        raise ValueError(f"{what}: every expert needs the same 2-D shape, got {[tuple(s) for s in shapes]}")
    return first


@dataclass(frozen=True)
class _ExpertStack(Transform):
    """A stack over ``experts`` slices of dim 0, ``per_expert`` HF tensors each."""

    experts: int
    rows_only = False
    per_expert = 1

    @property
    def arity(self) -> int:  # type: ignore[override]
        return self.per_expert * self.experts

    @property
    def blocks(self) -> int:  # type: ignore[override]
        return self.experts

    def sub(self, n: int) -> Transform:
        return type(self)(n)


@dataclass(frozen=True)
class StackGateUp(_ExpertStack):
    """``2E`` HF tensors ``[I, H]`` (gate, up per expert) <-> ``[E, H, 2I]``."""

    per_expert = 2

    def forward(self, hf: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack([torch.cat((hf[2 * e], hf[2 * e + 1])).t() for e in range(self.experts)])

    def inverse(self, mm: torch.Tensor) -> list[torch.Tensor]:
        i = mm.shape[2] // 2
        out = []
        for e in range(self.experts):
            w = mm[e].t()
            out += [w[:i].contiguous(), w[i:].contiguous()]
        return out

    def forward_shape(self, shapes: Sequence[Shape]) -> Shape:
        i, h = _same(shapes, "gate/up experts")
        return (self.experts, h, 2 * i)

    def inverse_shapes(self, shape: Shape) -> list[Shape]:
        e, h, two_i = shape
        if e != self.experts or two_i % 2:
            raise ValueError(f"stacked gate/up {tuple(shape)}: expected [{self.experts}, H, 2I]")
        return [(two_i // 2, h)] * (2 * e)


@dataclass(frozen=True)
class StackDown(_ExpertStack):
    """``E`` HF tensors ``[H, I]`` <-> ``[E, I, H]``."""

    def forward(self, hf: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack([t.t() for t in hf])

    def inverse(self, mm: torch.Tensor) -> list[torch.Tensor]:
        return [mm[e].t().contiguous() for e in range(self.experts)]

    def forward_shape(self, shapes: Sequence[Shape]) -> Shape:
        h, i = _same(shapes, "down experts")
        return (self.experts, i, h)

    def inverse_shapes(self, shape: Shape) -> list[Shape]:
        e, i, h = shape
        if e != self.experts:
            raise ValueError(f"stacked down {tuple(shape)}: expected [{self.experts}, I, H]")
        return [(h, i)] * e
