"""The example model: an embedding and a linear head, enough to show the builder contract."""

from __future__ import annotations

import torch
from torch import nn


class TinyTagger(nn.Module):
    def __init__(self, vocab_size: int = 32, hidden_size: int = 8, **_: object):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, hidden_size)
        self.head = nn.Linear(hidden_size, vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids))
