"""Multimodal rotary (mRoPE) position ids for Qwen2.5-VL, per packed segment.

Text tokens advance all three axes (temporal, height, width) together; an image or video occupies
``t * h * w / merge^2`` placeholder tokens whose positions follow the grid, offset by the position
where it starts, and advances the text position by ``max(h, w) / merge``. Video frames are spaced by
``tokens_per_second * second_per_grid_ts`` (transformers' ``get_rope_index``). Positions restart at 0
in every segment of a packed row, and padding (segment -1) gets position 0.
"""

from __future__ import annotations

import torch


def _vision_positions(start: int, grid: list[int], merge: int, interval: torch.Tensor | float) -> torch.Tensor:
    t, h, w = grid[0], grid[1] // merge, grid[2] // merge
    tpos = (torch.arange(t) * interval).long().view(t, 1, 1).expand(t, h, w)
    hpos = torch.arange(h).view(1, h, 1).expand(t, h, w)
    wpos = torch.arange(w).view(1, 1, w).expand(t, h, w)
    return torch.stack([tpos, hpos, wpos]).reshape(3, -1) + start


def mrope_position_ids(
    input_ids: torch.Tensor,
    *,
    image_token_id: int,
    video_token_id: int,
    spatial_merge_size: int,
    tokens_per_second: float,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grid_ts: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions ``[3, B, T]`` and each row's next free position ``[B]`` (for generation).

    Images and videos are taken in row order, as the data pipeline and the processor lay them out.
    ``segment_ids`` (``[B, T]``, -1 = padding) marks packed samples; without it a row is one sample.
    """
    bsz, seqlen = input_ids.shape
    merge = spatial_merge_size
    ids = input_ids.tolist()
    segs = segment_ids.tolist() if segment_ids is not None else [[0] * seqlen for _ in range(bsz)]
    images = image_grid_thw.tolist() if image_grid_thw is not None else []
    videos = video_grid_thw.tolist() if video_grid_thw is not None else []
    seconds = second_per_grid_ts.detach().cpu() if second_per_grid_ts is not None else None
    n_img = n_vid = 0
    out = torch.zeros(3, bsz, seqlen, dtype=torch.long)
    next_pos = torch.zeros(bsz, dtype=torch.long)
    for b in range(bsz):
        row, seg = ids[b], segs[b]
        i = 0
        while i < seqlen:
            if seg[i] < 0:
                i += 1
                continue
            end = i
            while end < seqlen and seg[end] == seg[i]:
                end += 1
            pos = 0  # positions restart per segment
            j = i
            while j < end:
                tok = row[j]
                if tok == image_token_id or tok == video_token_id:
                    is_video = tok == video_token_id
                    grids = videos if is_video else images
                    k = n_vid if is_video else n_img
                    if k >= len(grids):
                        kind = "video" if is_video else "image"
                        raise ValueError(
                            f"row {b} has more {kind} placeholder runs than {kind}_grid_thw entries ({len(grids)})"
                        )
                    grid = grids[k]
                    n = grid[0] * grid[1] * grid[2] // (merge * merge)
                    if j + n > end or any(row[x] != tok for x in range(j, j + n)):
                        raise ValueError(
                            f"row {b}: placeholder run at token {j} is shorter than the {n} tokens its grid "
                            f"{grid} needs; check the processor's output and merge size"
                        )
                    if is_video:
                        sec = seconds[k] if seconds is not None else 1.0
                        interval = tokens_per_second * sec
                        n_vid += 1
                    else:
                        interval = 1
                        n_img += 1
                    out[:, b, j:j + n] = _vision_positions(pos, grid, merge, interval)
                    pos += max(grid[1], grid[2]) // merge
                    j += n
                else:
                    k = j
                    while k < end and row[k] != image_token_id and row[k] != video_token_id:
                        k += 1
                    out[:, b, j:k] = torch.arange(pos, pos + k - j)
                    pos += k - j
                    j = k
            next_pos[b] = int(out[:, b, i:end].max()) + 1
            i = end
    if n_img != len(images) or n_vid != len(videos):
        raise ValueError(
            f"the batch has {len(images)} image and {len(videos)} video grids but its tokens use "
            f"{n_img} and {n_vid}; every image/video needs its placeholder tokens in input_ids"
        )
    return out.to(input_ids.device), next_pos.to(input_ids.device)
