"""GLM-4.1V's multimodal rotary: which placeholders are images or video frames, their 3-D positions,
and the interleaved partial cos/sin tables.

Video frames use the image placeholder token too; a placeholder between ``<|begin_of_video|>`` and
``<|end_of_video|>`` belongs to a video (the processor's ``mm_token_type_ids``: 0 text, 1 image,
2 video). Positions follow transformers' ``Glm4vModel.get_rope_index``: text tokens advance all
three axes together; each run of image placeholders takes the next image grid, each run of video
placeholders the next *frame* (a video grid ``(t, h, w)`` is ``t`` frame grids ``(1, h, w)``, because
timestamps separate the frames); a run gets temporal ``start + t_index``, height ``start + row``,
width ``start + column`` on the merged grid and advances the text position by ``max(h, w) / merge``.
Positions restart at 0 in every packed sample; padding (segment -1) gets 0.
"""

from __future__ import annotations

import torch

from mm_core.nn.mrope_index import grid_positions, mrope_index

IMAGE, VIDEO = 1, 2


def token_types(input_ids: torch.Tensor, *, image_token_id: int, video_start_token_id: int,
                video_end_token_id: int) -> torch.Tensor:
    """``[B, T]`` 0 text, 1 image placeholder, 2 video-frame placeholder (``mm_token_type_ids``)."""
    inside = torch.cumsum(input_ids == video_start_token_id, 1) > torch.cumsum(input_ids == video_end_token_id, 1)
    placeholder = input_ids == image_token_id
    return placeholder.long() * torch.where(inside, VIDEO, IMAGE)


def frame_grids(video_grid_thw: torch.Tensor | None) -> list[list[int]]:
    """Each video grid ``(t, h, w)`` as ``t`` frame grids ``(1, h, w)``, in order."""
    if video_grid_thw is None:
        return []
    return [[1, h, w] for t, h, w in video_grid_thw.tolist() for _ in range(t)]


def mrope_position_ids(input_ids: torch.Tensor, types: torch.Tensor, *, spatial_merge_size: int,
                       image_grid_thw: torch.Tensor | None = None, video_grid_thw: torch.Tensor | None = None,
                       segment_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions ``[3, B, T]`` and each row's next free position ``[B]`` (for generation)."""
    m = spatial_merge_size
    grids = {IMAGE: image_grid_thw.tolist() if image_grid_thw is not None else [], VIDEO: frame_grids(video_grid_thw)}
    used = {IMAGE: 0, VIDEO: 0}

    def place(b: int, j: int, kind: int, run: int) -> tuple[torch.Tensor, int]:
        name = "image" if kind == IMAGE else "video frame"
        if used[kind] >= len(grids[kind]):
            raise ValueError(f"row {b} has more {name} placeholder runs than the batch's "
                             f"{'image_grid_thw' if kind == IMAGE else 'video_grid_thw'} provides "
                             f"({len(grids[kind])} {name}s)")
        t, h, w = grids[kind][used[kind]]
        used[kind] += 1
        h, w = h // m, w // m
        if run != t * h * w:  # a run is exactly one image or frame: no two are adjacent in GLM's layout
            raise ValueError(f"row {b}: the {name} placeholder run at token {j} has {run} tokens, its "
                             f"grid {[t, h * m, w * m]} needs {t * h * w}; check the processor's output")
        return grid_positions(t, h, w), max(h, w)

    out, next_pos = mrope_index(types, place, segment_ids)
    for kind, name in ((IMAGE, "image grids"), (VIDEO, "video frames")):
        if used[kind] != len(grids[kind]):
            raise ValueError(f"the batch has {len(grids[kind])} {name} but its tokens use {used[kind]}; every image "
                             "and video frame needs its placeholder tokens in input_ids")
    return out.to(input_ids.device), next_pos.to(input_ids.device)


def mrope_cos_sin_interleaved(positions: torch.Tensor, rotary_dim: int, theta: float, sections: tuple[int, ...]
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, T, rotary_dim]`` tables from positions ``[3, B, T]``: the ``rotary_dim / 2`` frequencies are
    cut into ``sections`` (t, h, w), section i takes its angle from axis i, and every angle is
    repeated for its channel pair (the layout of ``rotary_interleaved``)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=positions.device)
                                / rotary_dim))
    freqs = positions.float().unsqueeze(-1) * inv_freq  # [3, B, T, rotary_dim / 2]
    freqs = torch.cat([f[i % 3] for i, f in enumerate(freqs.split(list(sections), dim=-1))], dim=-1)
    emb = freqs.repeat_interleave(2, dim=-1)
    return emb.cos(), emb.sin()
