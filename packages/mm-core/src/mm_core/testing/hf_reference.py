"""What family tests compare against: transformers' processor and ``generate``, driven the way a
user of the HF checkpoint would drive them (independent of mm's formatter and ``mm-run infer``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def hf_content(text: str) -> list[dict[str, Any]]:
    """'<image>\\nWhat?' -> the processor's content list (image, video and text items, in order)."""
    items: list[dict[str, Any]] = []
    for piece in text.replace("<video>", "\0video\0").replace("<image>", "\0image\0").split("\0"):
        if piece in ("image", "video"):
            items.append({"type": piece})
        elif piece:
            items.append({"type": "text", "text": piece})
    return items


def greedy_replies(model: Any, batch: Mapping[str, Any], stop_ids: Iterable[int], max_new_tokens: int) -> list[list[int]]:
    """transformers' greedy reply per row of ``batch``, cut after its first stop id (as infer stops)."""
    import torch

    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    stops = set(stop_ids)
    rows = []
    for tokens in out[:, batch["input_ids"].shape[1]:].tolist():
        cut = next((i + 1 for i, t in enumerate(tokens) if t in stops), len(tokens))
        rows.append(tokens[:cut])
    return rows
