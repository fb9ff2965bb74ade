"""Where GLM's engine weights lie in the reference system's DCP layout, so that ``mm-run finetune``
with ``output.load`` on an ``mm-convert ExpertMergeDcpConverter hf_to_dcp`` save dir trains from it
in any layout (``ModelSpec.checkpoint_sources``; the engine reads each rank's part,
``mm_core.engine.foreign_checkpoint``).

The layout stores ``model.`` + the Hub names under the state key ``model``. The converter's rule
table already says how each mm weight is made from Hub tensors (fused q/k/v, ``[gate; up]``), so
those rules apply unchanged to the stored names. The one difference is the merged experts: the
reference's ``...mlp.experts.gate_up_proj`` ``[E*H, 2I]`` and ``down_proj`` ``[E*I, H]`` hold the same
values in the same order as our ``weight1`` ``[E, H, 2I]`` / ``weight2`` ``[E, I, H]``: a view.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mm_core.checkpoint.expert_ops import StackDown, StackGateUp
from mm_core.engine.foreign_checkpoint import StoredSource
from mm_glm.config import GlmConfig
from mm_glm.expert_merge import DCP_PREFIX, LAYER, STATE_KEY

HEAD = f"{STATE_KEY}.{DCP_PREFIX}"  # DCP's flattened name of a stored Hub key: HEAD + key


def checkpoint_sources(model: Any, stored: Mapping[str, Sequence[int]]) -> dict[str, StoredSource] | None:
    """``{mm name: StoredSource}`` for a GLM stage model when ``stored`` is the reference layout, else None."""
    from mm_glm.convert import GlmConverter

    cfg = getattr(model, "config", None)
    if not isinstance(cfg, GlmConfig) or not cfg.raw or f"{HEAD}lm_head.weight" not in stored:
        return None
    conv = GlmConverter()
    plan = conv.plan(cfg.raw, conv.placement(cfg.raw, 1, {}), present_hf=None)
    out = {}
    for it in plan.items:
        op = it.rule.op
        if isinstance(op, (StackGateUp, StackDown)):  # the merged tensor, viewed as our stack
            key = f"{HEAD}{LAYER.format(layer=it.layer)}{'gate_up' if isinstance(op, StackGateUp) else 'down'}_proj"
            rows, cols = stored[key] if key in stored else (op.experts, 1)  # absent: the loader names it
            out[it.mm_key] = StoredSource((key,), views=((op.experts, rows // op.experts, cols),))
        else:
            out[it.mm_key] = StoredSource(tuple(HEAD + k for k in it.hf_keys), op)
    return out
