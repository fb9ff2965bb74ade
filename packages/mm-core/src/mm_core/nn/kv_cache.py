"""A simple growing key/value cache for batched generation with left padding."""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer keys/values plus what decoding needs to continue a batch.

    - ``segment_ids`` ``[B, T_seen]``: 0 on real tokens, -1 on (left) padding, so new tokens never
      attend to padding (the attention kernel masks by segment id).
    - ``next_positions`` ``[B]``: the rotary position of each row's next token. Models with their
      own position rules (e.g. Qwen2.5-VL's multimodal rotary) set it after the prefill.
    Layers are keyed by their index in the model, so one cache serves a whole (single-stage) model.
    """

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.segment_ids: torch.Tensor | None = None
        self.next_positions: torch.Tensor | None = None

    @property
    def seen_tokens(self) -> int:
        return 0 if self.segment_ids is None else self.segment_ids.shape[1]

    def extend_segments(self, new_segment_ids: torch.Tensor) -> torch.Tensor:
        """Append the segment ids of the new tokens; returns the ids of all cached + new tokens."""
        if self.segment_ids is None:
            self.segment_ids = new_segment_ids
        else:
            self.segment_ids = torch.cat([self.segment_ids, new_segment_ids], dim=1)
        return self.segment_ids

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``[B, H, T_new, D]`` keys/values for ``layer``; returns the full ones."""
        if layer in self.keys:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` of the batch (to drop finished sequences)."""
        for layer in self.keys:
            self.keys[layer] = self.keys[layer][rows]
            self.values[layer] = self.values[layer][rows]
        if self.segment_ids is not None:
            self.segment_ids = self.segment_ids[rows]
        if self.next_positions is not None:
            self.next_positions = self.next_positions[rows]
