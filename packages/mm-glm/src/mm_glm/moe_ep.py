"""Expert parallel for GLM-4.5V: each rank of an ep group keeps its share of every MoE layer's
experts and dispatches tokens with all-to-all (``mm_core.engine.expert_parallel``).

Rank ``j`` keeps experts ``[j * E/ep, (j + 1) * E/ep)`` of ``weight1``/``weight2``; the router and the
shared expert stay whole on every rank (they see only the rank's own tokens).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from mm_glm.moe import GroupedExperts


def shard_experts(model: nn.Module, group: dist.ProcessGroup) -> int:
    """Keep this rank's experts of every MoE layer in ``model`` and route over ``group``; returns the
    layers sharded. Experts must be divisible by the group size."""
    ep, rank = dist.get_world_size(group), dist.get_rank(group)
    done = 0
    for name, m in model.named_modules():
        if not isinstance(m, GroupedExperts):
            continue
        if m.num_experts % ep:
            raise ValueError(f"{name}: {m.num_experts} experts cannot be sharded over ep {ep}; choose an ep that "
                             "divides text_config.n_routed_experts")
        local = m.num_experts // ep
        part = slice(rank * local, (rank + 1) * local)
        with torch.no_grad():
            m.weight1 = nn.Parameter(m.weight1[part].clone(), requires_grad=m.weight1.requires_grad)
            m.weight2 = nn.Parameter(m.weight2[part].clone(), requires_grad=m.weight2.requires_grad)
        m.ep_group = group
        done += 1
    return done
