"""The walk over a batch that multimodal rotary (mRoPE) position ids share across families.

Qwen2.5-VL and GLM-4.1V (transformers' ``get_rope_index``) lay positions out the same way: text
tokens advance the temporal, height and width axes together; a vision placeholder run takes the
positions of its grid, offset by the position where it starts, and advances the text position by
the family's rule. Positions restart at 0 in every packed sample and padding (segment -1) gets 0.
What differs is which grid a run takes and how frames are spaced in time: the family's ``place``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

TEXT = 0  # the token type of text; any other value is a vision kind the family's ``place`` knows

# place(row, token, kind, run_length) -> (positions [3, n] from 0, text-position advance); it takes
# n <= run_length tokens (one image or frame group), and raises naming the row when they do not fit
Place = Callable[[int, int, int, int], tuple[torch.Tensor, int]]


def grid_positions(t: int, h: int, w: int, t_step: float | torch.Tensor = 1) -> torch.Tensor:
    """``[3, t*h*w]`` positions of a merged ``(t, h, w)`` grid from 0: frame ``i`` at ``int(i * t_step)``."""
    tt = (torch.arange(t) * t_step).long().view(t, 1, 1).expand(t, h, w)
    hh = torch.arange(h).view(1, h, 1).expand(t, h, w)
    ww = torch.arange(w).view(1, 1, w).expand(t, h, w)
    return torch.stack([tt, hh, ww]).reshape(3, -1)


def _spans(values: list[int], start: int, end: int) -> list[tuple[int, int]]:
    """``[(i, k), ...]``: the runs of equal values in ``values[start:end]``."""
    spans = []
    i = start
    while i < end:
        k = i
        while k < end and values[k] == values[i]:
            k += 1
        spans.append((i, k))
        i = k
    return spans


def mrope_index(types: torch.Tensor, place: Place,
                segment_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions ``[3, B, T]`` and each row's next free position ``[B]`` (for generation), from the
    token types ``[B, T]`` (``TEXT`` or a vision kind) and ``segment_ids`` (``[B, T]``, -1 padding;
    without it a row is one sample)."""
    bsz, seqlen = types.shape
    kinds = types.tolist()
    segs = segment_ids.tolist() if segment_ids is not None else [[0] * seqlen for _ in range(bsz)]
    out = torch.zeros(3, bsz, seqlen, dtype=torch.long)
    next_pos = torch.zeros(bsz, dtype=torch.long)
    for b in range(bsz):
        row = kinds[b]
        for start, end in _spans(segs[b], 0, seqlen):
            if segs[b][start] < 0:
                continue
            pos = 0
            for i, k in _spans(row, start, end):
                if row[i] == TEXT:
                    out[:, b, i:k] = torch.arange(pos, pos + k - i)
                    pos += k - i
                    continue
                j = i
                while j < k:  # one image or frame group at a time
                    rel, advance = place(b, j, row[i], k - j)
                    if rel.shape[1] == 0:
                        raise ValueError(f"row {b}: a vision grid at token {j} has no tokens")
                    out[:, b, j:j + rel.shape[1]] = rel + pos
                    pos += advance
                    j += rel.shape[1]
            next_pos[b] = int(out[:, b, start:end].max()) + 1
    return out.to(types.device), next_pos.to(types.device)
