"""The batch contract between the data pipeline, the models and the engine.

One micro-batch is a dict of tensors with these keys (families may add their own):

- ``input_ids`` ``[B, T]`` long.
- ``labels`` ``[B, T]`` long, aligned with ``input_ids`` (HF convention: the loss shifts), -100 where
  no loss is taken. The first token of every (packed) sample is -100, so a shift never makes one
  sample predict the next one's first token.
- ``attention_mask`` ``[B, T]`` long, 1 on real tokens, 0 on padding (left or right).
- ``segment_ids`` ``[B, T]`` long: the sample number inside its row (0, 1, 2, ... for packed
  samples), -1 on padding. Attention never crosses segments; positions restart per segment.
- ``pixel_values`` ``[N, C * temporal_patch * patch * patch]`` and ``image_grid_thw`` ``[n_images, 3]``:
  every image of the micro-batch in row order (Qwen2.5-VL processor layout).
- ``pixel_values_videos``, ``video_grid_thw`` ``[n_videos, 3]``, ``second_per_grid_ts`` ``[n_videos]``.
- ``dummy_vision`` (bool tensor, scalar): the micro-batch has no real media; ``pixel_values``
  holds one tiny dummy image that the model runs through the vision encoder and adds with weight
  exactly 0, so every data-parallel rank runs the same collectives.
- ``num_samples`` (int tensor, scalar): samples in the micro-batch (packed samples count one each).

Position ids are computed by the model from ``input_ids``, the grids and ``segment_ids``.
"""

from __future__ import annotations

from typing import TypedDict

import torch

IGNORE_INDEX = -100


class Batch(TypedDict, total=False):
    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    segment_ids: torch.Tensor
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor
    pixel_values_videos: torch.Tensor
    video_grid_thw: torch.Tensor
    second_per_grid_ts: torch.Tensor
    dummy_vision: torch.Tensor
    num_samples: torch.Tensor


def right_padded(rows: list[torch.Tensor], media_token: int | None = None) -> Batch:
    """``input_ids``, ``attention_mask`` and ``labels`` of token rows padded on the right (test batches,
    tiny checkpoints): labels are the ids except on padding and on ``media_token`` placeholders."""
    ids = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    keep = mask == 1 if media_token is None else (mask == 1) & (ids != media_token)
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.where(keep, ids, IGNORE_INDEX)}
