"""Attention heads that tp does not divide, trained with exactly mm-convert's shards.

mm-format gives the first ``heads mod tp`` ranks one head more (InternViT-6B: 25 heads at tp 8 are
4, 3, 3, ...); DTensor shards evenly. As for vocabularies (``vocab_padding``), each rank's shard is
its converter piece with zero "ghost" heads appended up to ``ceil(heads / tp)``, so the DTensor is
evenly sharded over a padded head count:

- a fused ``[Q; K; V]`` projection (``parts`` 3) pads every section: rank r holds
  ``[q_r, 0; k_r, 0; v_r, 0]``; a ghost head's q, k and v are zero, so its attention output is the
  mean of zero values: zero;
- the output projection (``dim`` 1) gets zero input columns for the ghost heads, so they add nothing;
- per-channel weights over all heads (InternViT-6B's q/k RMSNorm) pad the same way.

Ghost entries get zero gradients (every path through them multiplies by a zero weight or a zero
activation), so they stay zero under any optimizer without weight-dependent terms beyond decay of
zero. Checkpoints hold the canonical tensors: ``unpad`` on save, ``pad`` on load (see ``row_order``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class HeadPadding:
    heads: tuple[int, ...]  # real heads of each tp rank (mm-format's split)
    head_dim: int
    parts: int = 1  # equal sections along ``dim`` each split by heads ([Q; K; V]: 3)
    dim: int = 0

    @classmethod
    def of(cls, heads: int, tp: int, head_dim: int, *, parts: int = 1, dim: int = 0) -> HeadPadding:
        return cls(tuple(heads // tp + (1 if r < heads % tp else 0) for r in range(tp)), head_dim, parts, dim)

    @property
    def tp(self) -> int:
        return len(self.heads)

    @property
    def width(self) -> int:
        """Heads per rank in the padded layout."""
        return max(self.heads)

    @property
    def num_heads(self) -> int:
        return sum(self.heads)

    @property
    def padded_size(self) -> int:
        """Size of ``dim`` in the engine's (padded) global tensor."""
        return self.tp * self.parts * self.width * self.head_dim

    def _real(self, rank: int) -> tuple[int, int]:
        """``(first row, rows)`` of ``rank``'s heads inside one canonical section."""
        return sum(self.heads[:rank]) * self.head_dim, self.heads[rank] * self.head_dim

    def _zeros(self, like: torch.Tensor, rows: int) -> torch.Tensor:
        shape = list(like.shape)
        shape[self.dim] = rows
        return like.new_zeros(shape)

    def pad_piece(self, piece: torch.Tensor) -> torch.Tensor:
        """One rank's converter piece ``[part0_r; part1_r; ...]`` -> its padded shard (works on meta)."""
        sections = piece.chunk(self.parts, dim=self.dim) if self.parts > 1 else (piece,)
        out = []
        for s in sections:
            out.append(s)
            missing = self.width * self.head_dim - s.shape[self.dim]
            if missing:
                out.append(self._zeros(s, missing))
        return torch.cat(out, dim=self.dim) if len(out) > 1 else piece

    def real_piece(self, shard: torch.Tensor, rank: int) -> torch.Tensor:
        """A rank's padded shard -> its converter piece (the ghost heads dropped)."""
        block = self.width * self.head_dim
        n = self.heads[rank] * self.head_dim
        return torch.cat([shard.narrow(self.dim, p * block, n) for p in range(self.parts)], dim=self.dim)

    def pad(self, canonical: torch.Tensor) -> torch.Tensor:
        """Canonical ``[section0; section1; ...]`` -> the engine's global tensor, rank-blocked and padded."""
        size = canonical.shape[self.dim]
        if size != self.parts * self.num_heads * self.head_dim:
            raise ValueError(f"dim {self.dim} of {tuple(canonical.shape)} is not {self.parts} x {self.num_heads} "
                             f"heads of {self.head_dim}")
        sections = canonical.chunk(self.parts, dim=self.dim) if self.parts > 1 else (canonical,)
        pieces = []
        for r in range(self.tp):
            start, n = self._real(r)
            piece = torch.cat([s.narrow(self.dim, start, n) for s in sections], dim=self.dim)
            pieces.append(self.pad_piece(piece))
        return torch.cat(pieces, dim=self.dim)

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        """The engine's global tensor -> canonical (differentiable)."""
        block = self.parts * self.width * self.head_dim
        pieces = [self.real_piece(padded.narrow(self.dim, r * block, block), r) for r in range(self.tp)]
        if self.parts == 1:
            return torch.cat(pieces, dim=self.dim)
        per_rank = [p.chunk(self.parts, dim=self.dim) for p in pieces]
        return torch.cat([sec[i] for i in range(self.parts) for sec in per_rank], dim=self.dim)


def param_padding(module: torch.nn.Module, name: str) -> HeadPadding | None:
    """The head padding the tensor-parallel plan gave parameter ``name`` of ``module``, if any."""
    return getattr(module, "mm_param_padding", {}).get(name)


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced gradient: every rank's output feeds the
    loss through that rank's channels. (torch's own differentiable variants differ across the
    supported torch versions: deprecated in one, without autograd in older ones.)"""

    @staticmethod
    def forward(ctx, t: torch.Tensor, group) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        ctx.group = group
        t = t.clone()
        dist.all_reduce(t, group=group)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        import torch.distributed as dist

        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def sharded_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, channels: int, group) -> torch.Tensor:
    """RMSNorm over channels spread across the tp ranks of ``group`` (each holds ``x``'s local channels,
    ghost ones zero): the sum of squares is all-reduced and divided by the real ``channels``, so the
    result is the one-process norm of these channels (fp32 inside, like the ``rms_norm`` kernel)."""
    dtype = x.dtype
    h = x.float()
    total = _SumOverRanks.apply(h.pow(2).sum(-1, keepdim=True), group)
    h = h * torch.rsqrt(total / channels + eps)
    return weight * h.to(dtype)
