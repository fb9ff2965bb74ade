"""ChatGLM-6B's 2-D positions and prompt (prefix) tokens, per sample of a (packed, padded) row.

In a sample whose ``<sop>`` is at index c: tokens before it are the context (seen bidirectionally);
position ids are ``0..c-1``, then every later token gets the index of the ``[gMASK]`` (``[MASK]``)
before ``<sop>``; block position ids are 0 over the context, then 1, 2, 3, ... from ``<sop>`` on. A
sample without ``<sop>`` is plain causal text: positions ``0..n-1``, block positions 0.
"""

from __future__ import annotations

import torch


def glm_positions(input_ids: torch.Tensor, segment_ids: torch.Tensor | None, *, bos_token_id: int,
                  mask_token_ids: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(positions [2, B, T], context [B, T] bool, next [2, B], step [2, B])``: padding (segment -1) gets 0;
    the token after each row's last sample has positions ``next`` and each further one adds ``step``
    (after ``<sop>``: the same position, block + 1; causal text: position + 1)."""
    b, t = input_ids.shape
    pos = torch.zeros(2, b, t, dtype=torch.long, device=input_ids.device)
    context = torch.zeros(b, t, dtype=torch.bool, device=input_ids.device)
    nxt = torch.zeros(2, b, dtype=torch.long)
    step = torch.zeros(2, b, dtype=torch.long)
    seg = segment_ids if segment_ids is not None else torch.zeros_like(input_ids)
    ids_rows, seg_rows = input_ids.tolist(), seg.tolist()
    for r in range(b):
        start = 0
        while start < t:  # each run of one segment id is one sample (or padding)
            sid = seg_rows[r][start]
            stop = start
            while stop < t and seg_rows[r][stop] == sid:
                stop += 1
            if sid >= 0:
                ids = ids_rows[r][start:stop]
                n = stop - start
                c = ids.index(bos_token_id) if bos_token_id in ids else n
                masks = [i for i in range(c) if ids[i] in mask_token_ids]
                mask_pos = masks[-1] if masks else max(c - 1, 0)
                p = list(range(c)) + [mask_pos] * (n - c)
                blk = [0] * c + list(range(1, n - c + 1))
                if c == n:  # no <sop>: causal text
                    blk = [0] * n
                    nxt[:, r], step[:, r] = torch.tensor([n, 0]), torch.tensor([1, 0])
                else:
                    context[r, start:start + c] = True
                    nxt[:, r], step[:, r] = torch.tensor([mask_pos, n - c + 1]), torch.tensor([0, 1])
                pos[0, r, start:stop] = torch.tensor(p)
                pos[1, r, start:stop] = torch.tensor(blk)
            start = stop
    return pos, context, nxt.to(input_ids.device), step.to(input_ids.device)
