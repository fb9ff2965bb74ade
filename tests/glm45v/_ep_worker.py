"""Worker of test_expert_parallel (run by torchrun with 2 processes, gloo): one GLM-4.5V MoE layer
with its experts sharded over ep 2 against the same layer whole, on each rank's own tokens."""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from mm_glm.moe import MoeConfig, MoeMLP
from mm_glm.moe_ep import shard_experts


def _layer(bias: list[float] | None = None) -> MoeMLP:
    torch.manual_seed(0)
    cfg = MoeConfig(num_experts=4, top_k=2, moe_intermediate_size=12, shared_intermediate_size=12,
                    norm_topk_prob=True, routed_scaling_factor=1.5)
    layer = MoeMLP(16, cfg)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.3)
        layer.router.weight.normal_(0.0, 0.5)
        layer.router.expert_bias.normal_(0.0, 0.3)
        if bias is not None:
            layer.router.expert_bias.copy_(torch.tensor(bias))
    return layer.train()


def _run(layer: MoeMLP, x: torch.Tensor, proj: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = x.clone().requires_grad_()
    out = layer(x)
    (out * proj).sum().backward()
    grads = {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in layer.named_parameters()}
    grads["input"] = x.grad.clone()
    return out.detach(), grads


def _meta_checks(world: int) -> list[str]:
    """The engine shards experts possibly before any weight exists: on meta, nothing is copied and
    the DTensors say which experts this rank will fill (``[Replicate(), Shard(0)]`` on the expert mesh)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard

    from mm_core.engine.expert_parallel import expert_params
    from mm_core.engine.expert_parallel_mesh import expert_mesh

    with torch.device("meta"):
        layer = _layer()
    mesh = expert_mesh(init_device_mesh("cpu", (world,), mesh_dim_names=("data",)), world)
    shard_experts(layer, dist.group.WORLD, mesh=mesh)
    w = layer.experts.weight1
    bad = []
    if not (w.is_meta and w.shape == (4, 16, 24) and w.to_local().shape == (4 // world, 16, 24)
            and tuple(w.placements) == (Replicate(), Shard(0))):
        bad.append(f"meta: weight1 {type(w).__name__} {tuple(w.shape)} {getattr(w, 'placements', None)} on {w.device}")
    if expert_params(layer) != {layer.experts.weight1, layer.experts.weight2}:
        bad.append("meta: expert_params does not find exactly the two expert weights")
    return bad


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    bad = []
    # "one": some expert gets no rows from a rank; "idle": the last rank's experts get no rows at all
    # (it must still run the backward exchanges its peers run)
    for case, tokens, bias in (("many", 9, None), ("one", 1, None), ("idle", 5, [9.0, 9.0, -9.0, -9.0])):
        g = torch.Generator().manual_seed(5)
        xs = [torch.randn(1, tokens, 16, generator=g) for _ in range(world)]
        projs = [torch.randn(1, tokens, 16, generator=g) for _ in range(world)]
        whole = _layer(bias)
        ep = copy.deepcopy(whole)
        assert shard_experts(ep, dist.group.WORLD) == 1
        want, want_grads = _run(whole, xs[rank], projs[rank])
        got, got_grads = _run(ep, xs[rank], projs[rank])
        if not torch.allclose(got, want, rtol=1e-5, atol=1e-6):
            bad.append(f"{case}: output differs by {float((got - want).abs().max())}")
        local = 4 // world
        for name, g_want in want_grads.items():
            if name.startswith("experts."):  # the expert's gradient sums every rank's tokens
                dist.all_reduce(g_want)
                g_want = g_want[rank * local:(rank + 1) * local]
            if not torch.allclose(got_grads[name], g_want, rtol=1e-5, atol=1e-6):
                bad.append(f"{case}: gradient of {name} differs by {float((got_grads[name] - g_want).abs().max())}")
        counts = ep.take_expert_counts()
        if counts is None or int(counts.sum()) != 2 * tokens:
            bad.append(f"{case}: tokens_per_expert {counts} should count this rank's {tokens} tokens x top-2")
    bad += _meta_checks(world)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(bad))
    dist.barrier()
    # Leave without tearing the process groups down: twice under load (CI, and the torch 2.11 run)
    # a rank aborted at the end of this worker with "terminate called without an active exception"
    # after the checks were written. The exchanges no longer use functional collectives (the first
    # suspect), but the abort was not reproduced here in 14 loaded runs either way, so the guard stays;
    # the engine's ep runs (test_ep_layouts) close their groups normally.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
