"""Tokens routed to each expert in a training step, for the step record (MoE models only).

A stage model with routed experts offers ``take_expert_counts() -> {global layer: counts [E]}``
(summed over the step's forwards, reset when taken) and ``expert_counts_shape`` (all LLM layers,
experts per layer). Every rank fills its layers into one table, one all-reduce sums it over the
world (pipeline stages contribute their layers, data-parallel ranks their tokens; tensor-parallel
ranks route the same tokens, so their copies are divided out). Models without experts add nothing
and cost no collective.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist


def step_expert_load(stages: Sequence[Any], world_size: int, tp: int, device: torch.device) -> dict[str, Any]:
    """``{"tokens_per_expert": {"<layer>": counts}, "expert_load_max": busiest expert / mean}`` of the
    step's MoE layers ({} without experts)."""
    models = [getattr(m, "model", m) for m in stages]
    takers = [m for m in models if hasattr(m, "take_expert_counts")]
    if not takers:
        return {}
    layers, experts = takers[0].expert_counts_shape
    table = torch.zeros(layers, experts, dtype=torch.float64, device=device)
    for m in takers:
        for layer, counts in m.take_expert_counts().items():
            table[layer] += counts.to(device=device, dtype=torch.float64)
    if world_size > 1:
        dist.all_reduce(table)
    table = (table / tp).round().long().cpu()
    used = table[table.sum(1) > 0].double()
    peak = float((used.max(1).values / used.mean(1)).max()) if len(used) else 0.0
    return {"tokens_per_expert": {str(layer): row.tolist() for layer, row in enumerate(table) if int(row.sum())},
            "expert_load_max": peak}
