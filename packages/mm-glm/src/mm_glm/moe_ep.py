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


def shard_experts(model: nn.Module, group: dist.ProcessGroup, mesh=None) -> int:  # noqa: ANN001
    """Keep this rank's experts of every MoE layer in ``model`` and route over ``group``; returns the
    layers sharded. Experts must be divisible by the group size. With ``mesh`` (1-D, over the same
    ranks: the engine's), the kept experts are DTensors ``Shard(0)`` of the whole, tagged for the engine."""
    from mm_core.engine.expert_parallel import EP_TAG

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
            for attr in ("weight1", "weight2"):
                old = getattr(m, attr)
                kept = old[part].clone()
                if mesh is not None:
                    from torch.distributed.tensor import DTensor, Shard

                    kept = DTensor.from_local(kept, mesh, [Shard(0)], run_check=False, shape=old.shape,
                                              stride=old.stride())
                new = nn.Parameter(kept, requires_grad=old.requires_grad)
                if mesh is not None:
                    setattr(new, EP_TAG, True)
                setattr(m, attr, new)
        m.ep_group = group
        done += 1
    return done
