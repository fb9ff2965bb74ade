"""Reversible tensor ops of a conversion rule.

Two kinds, both pure functions of tensors (they run on meta tensors too, which is how output
shapes are known before any data is read):

- a *transform* turns the HF tensors of one rule into the one mm tensor and back
  (``forward(list) -> tensor``, ``inverse(tensor) -> list``);
- a *tensor-parallel split* cuts the full mm tensor into per-rank pieces and merges them back.

Every op's inverse is exact (pure reshapes, cats and slices), which the round-trip tests check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mm_core.errors import ConfigError

# --------------------------------------------------------------------------------------------
# transforms: HF tensors <-> one mm tensor


class Transform:
    """Base: the identity on one tensor.

    ``rows_only``: the op only moves whole rows of dim 0 (cats, interleaves), so it can run on a
    1-D tensor of row ids and the result copied file to file without touching the data.

    ``blocks``: the mm tensor is this many independent slices of dim 0 (a stack of experts), slice
    ``b`` made from HF tensors ``[b * per, (b + 1) * per)`` alone (``per = arity // blocks``), so a
    conversion can move a few slices at a time (:meth:`sub`) instead of the whole stack.
    """

    arity = 1
    rows_only = True
    blocks = 1

    def sub(self, n: int) -> Transform:
        """This transform over ``n`` consecutive slices (only for stacks: ``blocks > 1``)."""
        if self.blocks == 1 and n == 1:
            return self
        raise NotImplementedError(f"{type(self).__name__} is not a stack of slices")

    def forward(self, hf: Sequence[torch.Tensor]) -> torch.Tensor:
        (t,) = hf
        return t

    def inverse(self, mm: torch.Tensor) -> list[torch.Tensor]:
        return [mm]

    # shape arithmetic (plans and checks without data, and without meta-tensor dispatch)
    def forward_shape(self, shapes: Sequence[Shape]) -> Shape:
        return tuple(shapes[0])

    def inverse_shapes(self, shape: Shape) -> list[Shape]:
        return [tuple(shape)]


Shape = tuple[int, ...]


def _rows(shape: Sequence[int], want: int, what: str) -> None:
    if not shape or shape[0] != want:
        raise ValueError(f"{what} has shape {tuple(shape)}, expected {want} rows from config.json")


IDENTITY = Transform()


@dataclass(frozen=True)
class Concat(Transform):
    """``[a; b; ...]`` along ``dim`` with equal parts (gated MLP: ``[gate; up]``)."""

    parts: int = 2
    dim: int = 0

    @property
    def arity(self) -> int:  # type: ignore[override]
        return self.parts

    @property
    def rows_only(self) -> bool:  # type: ignore[override]
        return self.dim == 0

    def forward(self, hf: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(hf), dim=self.dim)

    def inverse(self, mm: torch.Tensor) -> list[torch.Tensor]:
        return [p.clone() for p in torch.chunk(mm, self.parts, dim=self.dim)]

    def forward_shape(self, shapes: Sequence[Shape]) -> Shape:
        first = list(shapes[0])
        if any(len(s) != len(first) or [x for i, x in enumerate(s) if i != self.dim]
               != [x for i, x in enumerate(first) if i != self.dim] for s in shapes):
            raise ValueError(f"cannot concatenate shapes {[tuple(s) for s in shapes]} on dim {self.dim}")
        first[self.dim] = sum(s[self.dim] for s in shapes)
        return tuple(first)

    def inverse_shapes(self, shape: Shape) -> list[Shape]:
        if shape[self.dim] % self.parts:
            raise ValueError(f"dim {self.dim} of {tuple(shape)} is not {self.parts} equal parts")
        part = list(shape)
        part[self.dim] //= self.parts
        return [tuple(part)] * self.parts


@dataclass(frozen=True)
class GroupInterleave(Transform):
    """Separate q, k, v -> ``[q_g0, k_g0, v_g0, q_g1, ...]`` over ``groups`` groups on dim 0.

    GQA: ``groups = num_key_value_heads``; a q group holds ``heads / groups`` heads. Works for
    weights and biases (any trailing dims).
    """

    groups: int
    q_rows: int  # rows of q per group (head_dim * heads / groups)
    kv_rows: int  # rows of k (and v) per group (head_dim)

    arity = 3

    def forward(self, hf: Sequence[torch.Tensor]) -> torch.Tensor:
        q, k, v = hf
        g, rest = self.groups, tuple(q.shape[1:])
        parts = [q.reshape(g, self.q_rows, *rest), k.reshape(g, self.kv_rows, *rest), v.reshape(g, self.kv_rows, *rest)]
        return torch.cat(parts, dim=1).reshape(g * (self.q_rows + 2 * self.kv_rows), *rest)

    def inverse(self, mm: torch.Tensor) -> list[torch.Tensor]:
        g, rest = self.groups, tuple(mm.shape[1:])
        q, k, v = torch.split(mm.reshape(g, self.q_rows + 2 * self.kv_rows, *rest),
                              [self.q_rows, self.kv_rows, self.kv_rows], dim=1)
        return [x.reshape(-1, *rest).clone() for x in (q, k, v)]

    def forward_shape(self, shapes: Sequence[Shape]) -> Shape:
        q, k, v = shapes
        _rows(q, self.groups * self.q_rows, "q")
        _rows(k, self.groups * self.kv_rows, "k")
        _rows(v, self.groups * self.kv_rows, "v")
        if not tuple(q[1:]) == tuple(k[1:]) == tuple(v[1:]):
            raise ValueError(f"q, k, v shapes {tuple(q)}, {tuple(k)}, {tuple(v)} differ beyond dim 0")
        return (self.groups * (self.q_rows + 2 * self.kv_rows), *q[1:])

    def inverse_shapes(self, shape: Shape) -> list[Shape]:
        _rows(shape, self.groups * (self.q_rows + 2 * self.kv_rows), "fused qkv")
        rest = tuple(shape[1:])
        return [(self.groups * self.q_rows, *rest), (self.groups * self.kv_rows, *rest),
                (self.groups * self.kv_rows, *rest)]


@dataclass(frozen=True)
class HeadInterleave(Transform):
    """Fused ``[Q; K; V]`` -> ``[q_h0, k_h0, v_h0, q_h1, ...]`` per head (Qwen ViT)."""

    heads: int
    head_dim: int

    def forward(self, hf: Sequence[torch.Tensor]) -> torch.Tensor:
        (t,) = hf
        rest = tuple(t.shape[1:])
        return t.reshape(3, self.heads, self.head_dim, *rest).transpose(0, 1).reshape(t.shape)

    def inverse(self, mm: torch.Tensor) -> list[torch.Tensor]:
        rest = tuple(mm.shape[1:])
        return [mm.reshape(self.heads, 3, self.head_dim, *rest).transpose(0, 1).reshape(mm.shape).contiguous()]

    def forward_shape(self, shapes: Sequence[Shape]) -> Shape:
        _rows(shapes[0], 3 * self.heads * self.head_dim, "fused [Q; K; V]")
        return tuple(shapes[0])

    def inverse_shapes(self, shape: Shape) -> list[Shape]:
        return [self.forward_shape([shape])]


# --------------------------------------------------------------------------------------------
# tensor-parallel splits: one mm tensor <-> per-rank pieces


class TPSplit:
    """Base: replicated (every rank holds the whole tensor)."""

    replicated = True
    rows_only = True  # pieces are made of whole rows of dim 0

    def sizes(self, shape: Sequence[int], tp: int, key: str) -> None:
        """Check that ``shape`` can be split over ``tp`` ranks (raises ConfigError naming ``key``)."""

    def split(self, t: torch.Tensor, tp: int) -> list[torch.Tensor]:
        return [t] * tp

    def piece(self, t: torch.Tensor, tp: int, rank: int) -> torch.Tensor:
        return self.split(t, tp)[rank]

    def merge(self, pieces: Sequence[torch.Tensor]) -> torch.Tensor:
        return pieces[0]

    def split_shapes(self, shape: Shape, tp: int) -> list[Shape]:
        return [tuple(shape)] * tp

    def merge_shape(self, shapes: Sequence[Shape]) -> Shape:
        return tuple(shapes[0])

    def describe(self) -> str:
        return "replicated"


REPLICATED = TPSplit()


@dataclass(frozen=True)
class Split(TPSplit):
    """Split ``dim`` over ranks in units of ``unit`` rows.

    ``parts > 1``: the tensor is ``parts`` equal sections (gated MLP ``[gate; up]``: 2) each split
    on its own; rank r gets ``[section0_r; section1_r; ...]``. ``uneven``: when the units do not
    divide, the first ``units % tp`` ranks get one unit more (InternVL's vocab of 151674).
    ``what`` names the counted thing in errors (e.g. ``num_key_value_heads``).
    """

    dim: int = 0
    parts: int = 1
    unit: int = 1
    uneven: bool = False
    what: str = "rows"

    replicated = False

    @property
    def rows_only(self) -> bool:  # type: ignore[override]
        return self.dim == 0

    def _rank_units(self, size: int, tp: int, key: str) -> list[int]:
        section = size // self.parts
        if size % self.parts or section % self.unit:
            raise ConfigError(f"{key}: dim {self.dim} of size {size} is not {self.parts} section(s) of whole "
                              f"{self.what} ({self.unit} rows each)")
        units = section // self.unit
        if units % tp and not self.uneven:
            raise ConfigError(f"{key}: {units} {self.what} cannot be split evenly over tp_size {tp}; "
                              f"choose a tp_size that divides {units}")
        if units < tp:
            raise ConfigError(f"{key}: {units} {self.what} are fewer than tp_size {tp}")
        return [units // tp + (1 if r < units % tp else 0) for r in range(tp)]

    def sizes(self, shape: Sequence[int], tp: int, key: str) -> None:
        if self.dim >= len(shape):
            raise ConfigError(f"{key}: shape {tuple(shape)} has no dim {self.dim} to split")
        self._rank_units(shape[self.dim], tp, key)

    def split(self, t: torch.Tensor, tp: int) -> list[torch.Tensor]:
        rows = [u * self.unit for u in self._rank_units(t.shape[self.dim], tp, "tensor")]
        sections = torch.chunk(t, self.parts, dim=self.dim) if self.parts > 1 else (t,)
        per_section = [torch.split(s, rows, dim=self.dim) for s in sections]
        out = []
        for r in range(tp):
            chunks = [ps[r] for ps in per_section]
            out.append(torch.cat(chunks, dim=self.dim) if len(chunks) > 1 else chunks[0].contiguous())
        return out

    def rows_of_rank(self, size: int, tp: int, rank: int) -> tuple[int, int]:
        """``[a, b)`` of dim 0 held by ``rank`` (only for ``parts == 1``): lets readers slice."""
        rows = [u * self.unit for u in self._rank_units(size, tp, "tensor")]
        return sum(rows[:rank]), sum(rows[: rank + 1])

    def merge(self, pieces: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.parts == 1:
            return torch.cat(list(pieces), dim=self.dim)
        sections = [torch.chunk(p, self.parts, dim=self.dim) for p in pieces]
        return torch.cat([sec[i] for i in range(self.parts) for sec in sections], dim=self.dim)

    def split_shapes(self, shape: Shape, tp: int) -> list[Shape]:
        out = []
        for units in self._rank_units(shape[self.dim], tp, "tensor"):
            s = list(shape)
            s[self.dim] = units * self.unit * self.parts
            out.append(tuple(s))
        return out

    def merge_shape(self, shapes: Sequence[Shape]) -> Shape:
        s = list(shapes[0])
        s[self.dim] = sum(x[self.dim] for x in shapes)
        return tuple(s)

    def describe(self) -> str:
        kind = "gated column" if self.parts > 1 else ("column" if self.dim == 0 else "row")
        return f"{kind} (dim {self.dim}{', uneven' if self.uneven else ''})"


COLUMN = Split(dim=0)
ROW = Split(dim=1)
GATED_COLUMN = Split(dim=0, parts=2)
VOCAB = Split(dim=0, uneven=True, what="vocabulary rows")
