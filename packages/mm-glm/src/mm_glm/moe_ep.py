"""Expert parallel for GLM-4.5V: each rank of an ep group keeps its share of every MoE layer's
experts and dispatches tokens with all-to-all (``mm_core.engine.expert_parallel``).

Rank ``j`` keeps experts ``[j * E/ep, (j + 1) * E/ep)`` of ``weight1``/``weight2``; the router and the
shared expert stay whole on every rank (they see only the rank's own tokens).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from mm_glm.moe import GroupedExperts


def shard_experts(model: nn.Module, group: dist.ProcessGroup, mesh: DeviceMesh | None = None) -> int:
    """Keep this rank's experts of every MoE layer in ``model`` and route over ``group``; returns the
    layers sharded. Experts must be divisible by the group size. With ``mesh`` (the engine's expert
    mesh, its last dimension over the ranks of ``group``), the kept experts are DTensors sharded
    over that dimension and replicated over the others. Meta tensors stay meta (nothing is copied)."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    ep, rank = dist.get_world_size(group), dist.get_rank(group)
    done = 0
    for name, m in model.named_modules():
        if not isinstance(m, GroupedExperts):
            continue
        if m.num_experts % ep:
            raise ValueError(f"{name}: {m.num_experts} experts cannot be sharded over parallel.ep {ep}; choose an "
                             "ep that divides text_config.n_routed_experts")
        local = m.num_experts // ep
        part = slice(rank * local, (rank + 1) * local)
        with torch.no_grad():
            for attr in ("weight1", "weight2"):
                old = getattr(m, attr)
                whole = old.to_local() if isinstance(old, DTensor) else old  # tp: replicated, whole on every rank
                kept = whole[part].clone()
                if mesh is not None:
                    placements = [Replicate()] * (mesh.ndim - 1) + [Shard(0)]
                    kept = DTensor.from_local(kept, mesh, placements, run_check=False, shape=whole.shape,
                                              stride=whole.stride())
                setattr(m, attr, nn.Parameter(kept, requires_grad=old.requires_grad))
        m.ep_group = group
        done += 1
    return done
