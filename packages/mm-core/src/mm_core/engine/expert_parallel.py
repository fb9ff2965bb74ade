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

The exchanges are plain c10d ``all_to_all_single`` calls that return once the data is in place
(:class:`_AllToAll`), not functional collectives, whose c10d work objects wait in a process-wide
registry until ``wait_tensor`` claims them. Every rank runs both exchanges forward and backward
in the same order, also when no row reaches its experts: a peer blocked in an exchange that a
rank skipped would wait forever. Engine wiring (``parallel.ep``): :mod:`mm_core.engine.expert_parallel_mesh`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from mm_core.engine.expert_parallel_mesh import (  # noqa: F401  (re-exported: the engine's entry points)
    check_expert_parallel,
    ep_group,
    expert_params,
    reduce_expert_grads,
    shard_stage_experts,
)


class _AllToAll(torch.autograd.Function):
    """Variable-size all-to-all of rows; backward sends the gradients back the same way reversed."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, out_sizes: list[int], in_sizes: list[int],
                group: dist.ProcessGroup) -> torch.Tensor:
        ctx.sizes, ctx.group = (out_sizes, in_sizes), group
        return _exchange(x, out_sizes, in_sizes, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        out_sizes, in_sizes = ctx.sizes
        return _exchange(grad, in_sizes, out_sizes, ctx.group), None, None, None


def _exchange(x: torch.Tensor, out_sizes: list[int], in_sizes: list[int], group: dist.ProcessGroup) -> torch.Tensor:
    out = x.new_empty((sum(out_sizes), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), out_sizes, in_sizes, group=group)  # synchronous: waited here
    return out


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
    got = _AllToAll.apply(x[token], recv_sizes, send_sizes, group)  # source-major, expert-major within a source
    expert_of = torch.repeat_interleave(torch.arange(local, device=x.device).repeat(ep), recv.reshape(-1))
    regroup = torch.argsort(expert_of, stable=True)  # expert-major (sources in order within an expert)
    done = run_local(got[regroup], recv.sum(0))
    if got.requires_grad and not done.requires_grad:  # no rows came (a kernel may answer with fresh zeros):
        done = done + got.sum() * 0  # stay on the graph, or this rank would skip the backward exchanges its peers run
    done = done[torch.argsort(regroup)]  # back to the received order
    back = _AllToAll.apply(done, send_sizes, recv_sizes, group)  # my rows, sorted by global expert again
    back = back * weights.reshape(-1)[order].unsqueeze(-1)
    result = torch.zeros_like(x).index_add_(0, token, back.to(x.dtype))
    return result, counts
