"""What every vision tower's config has: the encoder's shape (families subclass and add their own)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VisionTowerConfig:
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads
