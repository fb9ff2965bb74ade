"""Expert parallel: a mixture-of-experts layer whose experts are sharded over ``ep`` ranks, with
all-to-all token dispatch and combine (dropless: every routed token reaches its expert, no
capacity factor).

Rank ``j`` of the ep group holds experts ``[j * E/ep, (j + 1) * E/ep)``. Each rank routes its own
tokens, sorts the (token, expert) pairs by expert (so they are grouped by destination rank),
sends each rank its rows (``all_to_all_single``, sizes exchanged first), runs its local experts
as one grouped GEMM over what it received, and sends the results back to where they came from.
Both exchanges are differentiable (backward is the reverse all-to-all), so an expert's weight
gradient sums the contributions of the tokens of every ep rank.

What one process computes over the union of the ranks' tokens is what the ranks compute
together: the same rows meet the same expert weights, only in another order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist


def _all_to_all(x: torch.Tensor, out_sizes: list[int], in_sizes: list[int], group: dist.ProcessGroup) -> torch.Tensor:
    """Differentiable variable-size all-to-all of rows (backward: the reverse exchange)."""
    from torch.distributed._functional_collectives import all_to_all_single_autograd, wait_tensor

    return wait_tensor(all_to_all_single_autograd(x.contiguous(), out_sizes, in_sizes, group))


def experts_forward_ep(x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor,
                       run_local: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], num_experts: int,
                       group: dist.ProcessGroup) -> tuple[torch.Tensor, torch.Tensor]:
    """Routed experts over an ep group.

    ``x`` ``[N, H]`` this rank's tokens, ``chosen``/``weights`` ``[N, k]`` their global expert ids and
    routing weights; ``run_local(rows, counts)`` runs this rank's experts on ``rows`` sorted by local
    expert (``counts[e]`` rows each). Returns the weighted sum of each token's experts ``[N, H]`` and
    this rank's global rows per expert ``[E]`` (before dispatch).
    """
    ep = dist.get_world_size(group)
    if num_experts % ep:
        raise ValueError(f"{num_experts} experts cannot be sharded over ep {ep}: choose an ep that divides them")
    local = num_experts // ep
    k = chosen.shape[1]
    flat = chosen.reshape(-1)
    order = torch.argsort(flat, stable=True)
    token = order // k
    counts = torch.bincount(flat, minlength=num_experts)
    send = counts.view(ep, local)  # rows for each destination rank, per its local expert
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send.contiguous(), group=group)  # recv[src, e]: rows src sends to my expert e
    send_sizes, recv_sizes = send.sum(1).tolist(), recv.sum(1).tolist()
    got = _all_to_all(x[token], recv_sizes, send_sizes, group)  # source-major, expert-major within a source
    expert_of = torch.repeat_interleave(torch.arange(local, device=x.device).repeat(ep), recv.reshape(-1))
    regroup = torch.argsort(expert_of, stable=True)  # expert-major (sources in order within an expert)
    done = run_local(got[regroup], recv.sum(0))
    done = done[torch.argsort(regroup)]  # back to the received order
    back = _all_to_all(done, send_sizes, recv_sizes, group)  # my rows, sorted by global expert again
    back = back * weights.reshape(-1)[order].unsqueeze(-1)
    result = torch.zeros_like(x).index_add_(0, token, back.to(x.dtype))
    return result, counts


# -- engine wiring: ``parallel.ep`` ------------------------------------------------------------------
# ep shards the experts over the data-parallel ranks (ep = dp; cp 1): the data mesh is the ep mesh.
# A family's stage model offers ``shard_experts(mesh)``: it keeps its share of each MoE layer as
# DTensors ``Shard(0)`` on that mesh (full tensors in DCP checkpoints, norms over all experts) and
# tags them ``mm_expert_parallel``; FSDP2 leaves them alone, and their gradient, which sums every
# rank's tokens (all-to-all backward), is divided by ep to match FSDP's mean over ranks.

EP_TAG = "mm_expert_parallel"


def check_expert_parallel(ep: int, dp: int, tp: int, cp: int) -> None:
    """``parallel.ep``: 1, or every data-parallel rank (tp and cp 1)."""
    from mm_core.errors import ConfigError

    if ep < 1:
        raise ConfigError(f"parallel.ep: must be >= 1, got {ep}")
    if ep > 1 and (ep != dp or tp != 1 or cp != 1):
        raise ConfigError(f"parallel.ep: {ep} must equal the data-parallel size ({dp}) with parallel.tp 1 and "
                          f"parallel.cp 1 (got tp {tp}, cp {cp}); experts are sharded over the data-parallel ranks")


def ep_group(par) -> dist.ProcessGroup:  # noqa: ANN001 - mm_core.engine.mesh.Parallel
    """A process group of this rank's data-parallel ranks for the token all-to-alls only, so that
    they never share one channel (and its order) with FSDP2's asynchronous all-gathers and
    reduce-scatters on the dp group."""
    grid = par.mesh.mesh  # ranks [pp, dp, cp, tp]
    mine = None
    for p in range(grid.shape[0]):  # every rank creates every group, in the same order
        for c in range(grid.shape[2]):
            for t in range(grid.shape[3]):
                ranks = grid[p, :, c, t].tolist()
                group = dist.new_group(ranks=ranks)
                if par.rank in ranks:
                    mine = group
    assert mine is not None
    return mine


def shard_stage_experts(model: torch.nn.Module, mesh, group: dist.ProcessGroup, what: str) -> int:
    """Shard ``model``'s experts over ``mesh`` (the data mesh), exchanging tokens over ``group``
    (:func:`ep_group`); returns the MoE layers sharded."""
    from mm_core.errors import ConfigError

    shard = getattr(model, "shard_experts", None)
    if shard is None:
        raise ConfigError(f"parallel.ep: {what} has no experts to shard (no shard_experts); set parallel.ep 1")
    n = shard(mesh, group)
    ep = mesh.size()
    for p in model.parameters():
        if getattr(p, EP_TAG, False) and p.requires_grad:
            p.register_hook(lambda g, ep=ep: g / ep)
    return n


def expert_params(module: torch.nn.Module) -> set[torch.nn.Parameter]:
    """The parameters sharded by expert parallel (FSDP2 must ignore them)."""
    return {p for p in module.parameters() if getattr(p, EP_TAG, False)}
