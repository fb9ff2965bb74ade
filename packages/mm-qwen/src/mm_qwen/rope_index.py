"""Multimodal rotary (mRoPE) position ids for Qwen2.5-VL, per packed segment.

Text tokens advance all three axes (temporal, height, width) together; an image or video occupies
``t * h * w / merge^2`` placeholder tokens whose positions follow the grid, offset by the position
where it starts, and advances the text position by ``max(h, w) / merge``. Video frames are spaced by
``tokens_per_second * second_per_grid_ts`` (transformers' ``get_rope_index``). Positions restart at 0
in every segment of a packed row, and padding (segment -1) gets position 0.
"""

from __future__ import annotations

import torch

from mm_core.nn.mrope_index import TEXT, grid_positions, mrope_index

IMAGE, VIDEO = 1, 2


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
    merge = spatial_merge_size
    grids = {IMAGE: image_grid_thw.tolist() if image_grid_thw is not None else [],
             VIDEO: video_grid_thw.tolist() if video_grid_thw is not None else []}
    seconds = second_per_grid_ts.detach().cpu() if second_per_grid_ts is not None else None
    used = {IMAGE: 0, VIDEO: 0}

    def place(b: int, j: int, kind: int, run: int) -> tuple[torch.Tensor, int]:
        name = "video" if kind == VIDEO else "image"
        k = used[kind]
        if k >= len(grids[kind]):
            raise ValueError(f"row {b} has more {name} placeholder runs than {name}_grid_thw entries "
                             f"({len(grids[kind])})")
        grid = grids[kind][k]
        t, h, w = grid[0], grid[1] // merge, grid[2] // merge
        if t * h * w > run:
            raise ValueError(f"row {b}: placeholder run at token {j} is shorter than the {t * h * w} tokens its "
                             f"grid {grid} needs; check the processor's output and merge size")
        used[kind] += 1
        # video frames are spaced by tokens_per_second * second_per_grid_ts (transformers' get_rope_index)
        step = tokens_per_second * (seconds[k] if seconds is not None else 1.0) if kind == VIDEO else 1
        return grid_positions(t, h, w, step), max(h, w)

    types = torch.where(input_ids == image_token_id, IMAGE, torch.where(input_ids == video_token_id, VIDEO, TEXT))
    out, next_pos = mrope_index(types, place, segment_ids)
    if used[IMAGE] != len(grids[IMAGE]) or used[VIDEO] != len(grids[VIDEO]):
        raise ValueError(
            f"the batch has {len(grids[IMAGE])} image and {len(grids[VIDEO])} video grids but its tokens use "
            f"{used[IMAGE]} and {used[VIDEO]}; every image/video needs its placeholder tokens in input_ids"
        )
    return out.to(input_ids.device), next_pos.to(input_ids.device)
