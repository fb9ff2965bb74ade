"""One adapted Linear: ``lora_A.<s>`` / ``lora_B.<s>`` parameters on the module and a forward hook.

The hook runs after the module (and after a tensor-parallel style's output hook), so it sees the
module's real input and the output this rank holds. It computes the adapter from the WHOLE input
and adds the rows (and tokens) of its result that this rank's output holds:

- column parallel: the input is a replicated DTensor, the output this rank's rows; only those rows
  of ``B`` are used. Each rank then sees part of the gradient of ``A``, ``B`` and the input, so the
  adapter weights' gradients are summed over the tp group and the input's is declared ``Partial``;
- row parallel: the input is sharded on its last dim and is all-gathered; the output is whole
  (every tp rank computes the same thing and gets the same gradients), or, with sequence
  parallel, this rank's share of the tokens (then partial again, as for columns);
- no tensor parallelism: plain tensors.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

from mm_core.errors import ConfigError
from mm_core.lora.sections import Sections


class _SumGrad(torch.autograd.Function):
    """Identity forward; the gradient is summed over ``group`` (each rank holds part of it)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, group) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        return t.view_as(t)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        g = g.contiguous().clone()
        dist.all_reduce(g, group=ctx.group)
        return g, None


@dataclass
class LoraMeta:
    """What the hook needs besides the parameters (not part of the state dict)."""

    name: str  # whole-model module path
    sections: Sections
    scaling: float
    dropout: float
    out_features: int
    index: torch.Tensor | None  # output row -> row of block_diag(B_s) (None: identity)
    local_index: torch.Tensor | None  # the same for this tp rank's output rows (column parallel)


def _local_rows(weight: torch.Tensor, blocks: object) -> torch.Tensor | None:
    """Canonical ids of the output rows this rank holds (None: all of them)."""
    if not isinstance(weight, DTensor) or not any(isinstance(p, Shard) and p.dim == 0 for p in weight.placements):
        return None
    from mm_core.engine.row_order import canonical_to_blocked

    mesh = weight.device_mesh
    rows = torch.arange(weight.shape[0])
    if isinstance(blocks, tuple):  # tp-blocked sections ([gate_r; up_r] on rank r)
        rows = canonical_to_blocked(rows, *blocks)
    return rows.chunk(mesh.size())[mesh.get_local_rank()]


def init_pair(a: torch.Tensor, b: torch.Tensor, seed: int, key: str) -> None:
    """A: kaiming-uniform(a=sqrt 5), B: zeros, from a generator seeded by the parameter's whole-model
    name, so every layout (and every rank holding a copy) starts from the same adapters."""
    g = torch.Generator(device="cpu").manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % (2**63))
    cpu = torch.empty(a.shape, dtype=torch.float32)
    nn.init.kaiming_uniform_(cpu, a=math.sqrt(5), generator=g)
    with torch.no_grad():
        a.copy_(cpu)
        b.zero_()


def attach(module: nn.Linear, name: str, sections: Sections, rank: int, scaling: float, dropout: float, seed: int,
           blocks: object = None) -> None:
    """Give ``module`` its adapter parameters and hook (its own parameters keep their names)."""
    weight = module.weight
    out_f, in_f = weight.shape
    device = weight.device
    if sum(sections.sizes) != out_f:
        raise ConfigError(f"lora.targets: {name} has {out_f} rows here but {sum(sections.sizes)} in the checkpoint "
                          "(rows padded for tensor parallelism?); LoRA cannot adapt it in this layout: leave it out "
                          "of lora.targets or choose another parallel.tp")
    module.lora_A = nn.ParameterList([nn.Parameter(torch.empty(rank, in_f, device=device)) for _ in sections.sizes])
    module.lora_B = nn.ParameterList([nn.Parameter(torch.empty(n, rank, device=device)) for n in sections.sizes])
    for s, (a, b) in enumerate(zip(module.lora_A, module.lora_B)):
        init_pair(a, b, seed, f"{name}.lora_A.{s}")
    concat = sections.concat_of_row
    identity = sections.count == 1 and torch.equal(concat, torch.arange(out_f))
    local = _local_rows(weight, blocks)
    module.mm_lora = LoraMeta(name, sections, scaling, dropout, out_f, None if identity else concat.to(device),
                              None if local is None else concat[local].to(device))
    module.register_forward_hook(_forward_hook)


def _forward_hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    meta: LoraMeta = module.mm_lora
    x = args[0]
    if isinstance(out, DTensor):
        raise RuntimeError(f"{meta.name}: LoRA needs a module whose output is a local tensor (use_local_output)")
    partial = False
    index = meta.index
    if out.shape[-1] != meta.out_features:  # column parallel: this rank's rows
        index, partial = meta.local_index, True
        if index is None or index.numel() != out.shape[-1]:
            raise RuntimeError(f"{meta.name}: output has {out.shape[-1]} of {meta.out_features} rows, which the "
                               "adapter cannot place")
    group, rank, world = None, 0, 1
    if isinstance(x, DTensor):
        mesh = x.device_mesh
        group, rank, world = mesh.get_group(), mesh.get_local_rank(), mesh.size()
        if not all(p.is_replicate() for p in x.placements):
            x = x.redistribute(mesh, [Replicate()] * mesh.ndim)
        token_split = tuple(x.shape[:-1]) != tuple(out.shape[:-1])  # sequence parallel output
        partial = partial or token_split
        x = x.to_local(grad_placements=[Partial() if partial else Replicate()] * mesh.ndim)
        if token_split:
            d = next(i for i in range(x.dim() - 1) if x.shape[i] != out.shape[i])
            x = x.chunk(world, dim=d)[rank]
    elif partial:
        raise RuntimeError(f"{meta.name}: a row-split output with a plain (non-DTensor) input")
    a_list, b_list = list(module.lora_A), list(module.lora_B)
    if partial and world > 1:
        a_list = [_SumGrad.apply(a, group) for a in a_list]
        b_list = [_SumGrad.apply(b, group) for b in b_list]
    if meta.dropout and module.training:
        x = F.dropout(x, meta.dropout)
    h = torch.cat([F.linear(x, a) for a in a_list], dim=-1) if len(a_list) > 1 else F.linear(x, a_list[0])
    b = torch.block_diag(*b_list) if len(b_list) > 1 else b_list[0]
    if index is not None:
        b = b.index_select(0, index)
    return out + F.linear(h, b) * meta.scaling
