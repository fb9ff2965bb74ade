"""Token layouts of packed rows (several samples per row) for mask-free attention kernels.

The CUDA flash varlen kernel wants the real tokens as one sequence with cumulative sample
offsets; the CPU kernel wants views: samples of equal length at the same column of consecutive
rows (vision windows, or packed rows that happen to agree) share one attention call. Both read the same ``segment_ids`` ``[B, T]`` (sample number per token,
contiguous runs, -1 on padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def segments_to_varlen(segment_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(flat indices of the real tokens, cumulative sample offsets int32 ``[S + 1]``, longest sample).

    ``segment_ids`` ``[B, T]`` numbers the samples of each row (contiguous runs), -1 on padding.
    A new sample starts wherever the (row, id) pair changes along the flattened real tokens.
    """
    b, t = segment_ids.shape
    flat = segment_ids.reshape(-1)
    index = (flat >= 0).nonzero().squeeze(1)
    rows = torch.div(index, t, rounding_mode="floor")
    key = rows * (int(segment_ids.max().item()) + 2) + flat[index]
    starts = torch.ones_like(key, dtype=torch.bool)
    starts[1:] = key[1:] != key[:-1]
    first = starts.nonzero().squeeze(1)
    cu = torch.cat([first, first.new_tensor([index.numel()])]).to(torch.int32)
    longest = int((cu[1:] - cu[:-1]).max().item()) if first.numel() else 0
    return index, cu, longest


@dataclass(frozen=True)
class Block:
    """Samples of one length at the same column of consecutive rows: ``x[row:row + rows, :, col:col + length]``
    of a ``[B, H, T, D]`` tensor is all of them, a view (vision windows: many rows at once)."""

    row: int
    rows: int
    col: int
    length: int


@dataclass(frozen=True)
class SampleBlocks:
    """Every sample of ``[B, T]`` in exactly one block; ``padding`` lists ``(row, col, length)`` runs of -1."""

    blocks: tuple[Block, ...]
    padding: tuple[tuple[int, int, int], ...]


def segments_to_blocks(segment_ids: torch.Tensor) -> SampleBlocks:
    """The samples of packed rows as few attention-sized views as possible (one host sync)."""
    b, t = segment_ids.shape
    index, cu, _ = segments_to_varlen(segment_ids)
    starts = index[cu[:-1].long()].tolist()  # flat position of each sample's first token
    lengths = (cu[1:] - cu[:-1]).tolist()
    padding, end = [], 0
    for start, length in zip(starts, lengths, strict=True):
        padding += _row_pieces(end, start, t)
        end = start + length
    padding += _row_pieces(end, b * t, t)
    blocks: list[Block] = []
    for (length, col, row) in sorted((n, s % t, s // t) for s, n in zip(starts, lengths, strict=True)):
        last = blocks[-1] if blocks else None
        if last and (last.length, last.col, last.row + last.rows) == (length, col, row):
            blocks[-1] = Block(last.row, last.rows + 1, col, length)
        else:
            blocks.append(Block(row, 1, col, length))
    return SampleBlocks(tuple(blocks), tuple(padding))


def _row_pieces(start: int, stop: int, t: int) -> list[tuple[int, int, int]]:
    """The flat range ``[start, stop)`` of ``[B * T]`` cut at row ends: ``(row, col, length)`` runs."""
    pieces = []
    while start < stop:
        row, col = divmod(start, t)
        n = min(stop - start, t - col)
        pieces.append((row, col, n))
        start += n
    return pieces
