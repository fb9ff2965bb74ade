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


def _layer() -> MoeMLP:
    torch.manual_seed(0)
    cfg = MoeConfig(num_experts=4, top_k=2, moe_intermediate_size=12, shared_intermediate_size=12,
                    norm_topk_prob=True, routed_scaling_factor=1.5)
    layer = MoeMLP(16, cfg)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.3)
        layer.router.weight.normal_(0.0, 0.5)
        layer.router.expert_bias.normal_(0.0, 0.3)
    return layer.train()


def _run(layer: MoeMLP, x: torch.Tensor, proj: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = x.clone().requires_grad_()
    out = layer(x)
    (out * proj).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    grads["input"] = x.grad.clone()
    return out.detach(), grads


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    bad = []
    for case, tokens in (("many", 9), ("one", 1)):  # "one": some expert gets no rows from a rank
        g = torch.Generator().manual_seed(5)
        xs = [torch.randn(1, tokens, 16, generator=g) for _ in range(world)]
        projs = [torch.randn(1, tokens, 16, generator=g) for _ in range(world)]
        whole = _layer()
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
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(bad))
    dist.barrier()
    # Leave without tearing the process groups down: twice under load (CI, and the torch 2.11 run)
    # a rank aborted at the end of this worker with "terminate called without an active exception"
    # after the checks were written; the cause (functional all-to-all work left at teardown?) is
    # open, and this test is about the numbers, which both ranks have written by now.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
