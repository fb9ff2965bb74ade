"""Vocabulary rows that tp does not divide, trained with exactly mm-convert's shards.

mm-format gives the first ``V mod tp`` ranks one row more; DTensor shards like ``torch.chunk``.
Where the two differ (InternVL3's 151674 rows at tp 4 or 8), each rank's shard is its converter
piece followed by zero "ghost" rows up to ``ceil(V / tp)``, so the DTensor is evenly sharded over
a padded vocabulary and rank r's real rows are exactly its mm rank file's. Around it:

- the embedding maps token ids to padded rows (a pre-hook), ghost rows are never looked up;
- the loss uses each rank's real rows only (``local_rows``), so ghost logits never count;
- gathered logits drop the ghost columns (``unpad`` on the last dim);
- checkpoints hold the canonical ``[V, H]`` (``unpad`` on save, ``pad`` on load), so they reshard
  to any tp size and convert to HF, like the tp-blocked gated rows of ``row_order``.

Ghost rows get no gradient, so they stay zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class VocabPadding:
    rows: tuple[int, ...]  # real rows of each tp rank (mm-format's split)

    @classmethod
    def of(cls, vocab: int, tp: int) -> VocabPadding:
        return cls(tuple(vocab // tp + (1 if r < vocab % tp else 0) for r in range(tp)))

    @property
    def tp(self) -> int:
        return len(self.rows)

    @property
    def width(self) -> int:
        """Rows per rank in the padded layout."""
        return max(self.rows)

    @property
    def vocab(self) -> int:
        return sum(self.rows)

    def start(self, rank: int) -> int:
        """The first real (canonical) row of ``rank``."""
        return sum(self.rows[:rank])

    def keep(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Padded positions of the canonical rows, in canonical order."""
        idx = [r * self.width + i for r, n in enumerate(self.rows) for i in range(n)]
        return torch.tensor(idx, dtype=torch.long, device=device)

    def pad(self, canonical: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """``[V, ...]`` -> ``[tp * width, ...]`` with zero ghost rows (works on meta tensors too)."""
        pieces = []
        for r, n in enumerate(self.rows):
            piece = canonical.narrow(dim, self.start(r), n)
            pieces.append(self.pad_piece(piece, dim))
        return torch.cat(pieces, dim=dim)

    def pad_piece(self, piece: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """One rank's ``[rows_r, ...]`` -> ``[width, ...]``."""
        missing = self.width - piece.shape[dim]
        if missing == 0:
            return piece
        shape = list(piece.shape)
        shape[dim] = missing
        return torch.cat([piece, piece.new_zeros(shape)], dim=dim)

    def unpad(self, padded: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """``[tp * width, ...]`` -> ``[V, ...]`` (differentiable)."""
        return padded.index_select(dim, self.keep(padded.device))

    def padded_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids -> rows of the padded embedding."""
        ends = torch.tensor([self.start(r + 1) for r in range(self.tp - 1)], dtype=ids.dtype, device=ids.device)
        rank = torch.bucketize(ids, ends, right=True)
        shift = torch.tensor([r * self.width - self.start(r) for r in range(self.tp)], dtype=ids.dtype,
                             device=ids.device)
        return ids + shift[rank]

    def local_rows(self, local: torch.Tensor, rank: int) -> tuple[torch.Tensor, int]:
        """A rank's padded shard -> (its real rows, the first canonical row they hold)."""
        return local[: self.rows[rank]], self.start(rank)


def padding_of(module: torch.nn.Module) -> VocabPadding | None:
    """The padding the tensor-parallel plan gave this embedding / output layer, if any."""
    return getattr(module, "mm_vocab_padding", None)


def head_padding(model: torch.nn.Module, weight: torch.Tensor) -> VocabPadding | None:
    """The padding of the module whose parameter ``weight`` is (the LM head, or the tied embedding)."""
    for module in model.modules():
        padding = padding_of(module)
        if padding is not None and any(p is weight for p in module.parameters(recurse=False)):
            return padding
    return None
