"""Encoded samples -> one micro-batch of the batch contract (:mod:`mm_core.batch`).

Rows are right-padded to a multiple of 8. A row holds one sample (padding mode) or several
whole samples (packing): ``segment_ids`` number them so attention never crosses samples and
positions restart. The first label of every sample is -100, so a shifted loss never asks one
sample to predict the next one's first token. A micro-batch without any image or video gets the
formatter's dummy image and ``dummy_vision=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mm_core.batch import IGNORE_INDEX, Batch

PAD_MULTIPLE = 8
_VISION_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def collate(
    samples: Sequence[dict[str, Any]],
    rows: Sequence[Sequence[int]] | None = None,
    *,
    pad_token_id: int,
    dummy_vision: dict[str, torch.Tensor] | None = None,
    pad_multiple: int = PAD_MULTIPLE,
) -> Batch:
    """Collate ``samples`` (formatter outputs) into rows (lists of sample indices; default one each)."""
    if rows is None:
        rows = [[i] for i in range(len(samples))]
    if not rows:
        raise ValueError("cannot collate an empty micro-batch")
    lengths = [sum(len(samples[i]["input_ids"]) for i in r) for r in rows]
    T = _round_up(max(lengths), pad_multiple)
    B = len(rows)
    input_ids = torch.full((B, T), pad_token_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    segment_ids = torch.full((B, T), -1, dtype=torch.long)
    for b, row in enumerate(rows):
        pos = 0
        for seg, i in enumerate(row):
            ids, lab = samples[i]["input_ids"], samples[i]["labels"]
            n = len(ids)
            input_ids[b, pos:pos + n] = torch.as_tensor(ids, dtype=torch.long)
            labels[b, pos:pos + n] = torch.as_tensor(lab, dtype=torch.long)
            labels[b, pos] = IGNORE_INDEX
            segment_ids[b, pos:pos + n] = seg
            pos += n
    batch: Batch = {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": (segment_ids >= 0).long(),
        "segment_ids": segment_ids,
        "num_samples": torch.tensor(sum(len(r) for r in rows)),
    }
    ordered = [samples[i] for r in rows for i in r]
    for key in _VISION_KEYS:
        parts = [s[key] for s in ordered if key in s]
        if parts:
            batch[key] = torch.cat(parts, dim=0)
    use_dummy = dummy_vision is not None and "pixel_values" not in batch and "pixel_values_videos" not in batch
    if use_dummy:
        batch.update(dummy_vision)  # whatever the family's encoder takes (pixels, grids)
    batch["dummy_vision"] = torch.tensor(use_dummy)
    return batch
