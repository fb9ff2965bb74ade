"""A VisualGLM state dict in one source layout <-> mm names, through the converter's rule table.

Used to write the tiny checkpoints, the SAT ``.pt`` and HF ``.bin`` files and the three-part export:
every tensor goes through its rule's op (exact reshapes, so both directions are bit-exact).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mm_core.layout import Placement


def _plan(config: Mapping[str, Any], layout: str, qkv_order: str | None):
    from mm_visualglm.convert import VisualGLMConverter

    conv = VisualGLMConverter(layout, qkv_order)  # type: ignore[arg-type]
    placement = Placement(conv.depths(config), {}, 1)
    return conv.plan(config, placement)


def mm_to_source(state: Mapping[str, torch.Tensor], config: Mapping[str, Any], layout: str,
                 qkv_order: str | None = None) -> dict[str, torch.Tensor]:
    """Whole-model mm state (one stage, tp 1) -> the ``layout``'s keys (``hf`` or ``sat``)."""
    out: dict[str, torch.Tensor] = {}
    for it in _plan(config, layout, qkv_order).items:
        for key, t in zip(it.hf_keys, it.rule.op.inverse(state[it.mm_key]), strict=True):
            out[key] = t
    return out


def source_to_mm(state: Mapping[str, torch.Tensor], config: Mapping[str, Any], layout: str,
                 qkv_order: str | None = None) -> dict[str, torch.Tensor]:
    """The ``layout``'s keys -> whole-model mm state (one stage, tp 1)."""
    return {it.mm_key: it.rule.op.forward([state[k] for k in it.hf_keys])
            for it in _plan(config, layout, qkv_order).items}
