"""Engine wiring of expert parallel (``parallel.ep``): which ranks share experts, how expert
weights are placed, and how their gradients are reduced.

Layout. ep splits the data mesh (what FSDP2 shards over: dp, or dp x cp flattened under context
parallel) into ``replica x ep``: ep consecutive data ranks form an ep group that holds one copy
of every expert (rank ``j`` of the group the ``j``-th ``E/ep`` of each MoE layer) and exchanges
tokens by all-to-all; the ``dp x cp / ep`` groups are replicas of each other. ep may span cp:
cp ranks hold different tokens of the same sequences, which the all-to-all does not care about.
tp ranks see the same tokens, so every tp rank runs its own ep group over the ranks of its tp
index and keeps whole (tp-replicated) experts, as without ep; each pipeline stage shards the MoE
layers it holds. ep never crosses tp or pp: it must divide dp x cp.

Placement. Expert weights are DTensors on a 2-D ``(ep_replica, ep)`` mesh unflattened from the
data mesh, placements ``[Replicate(), Shard(0)]``, and FSDP2 leaves them alone
(:func:`expert_params`). Chosen over torchtitan's layout (experts further FSDP-sharded over the
replicas): it needs no second FSDP unit with its own mixed-precision policy inside each layer
(FSDP2 is applied by the engine, not here), DCP saves and reshards ``Replicate``/``Shard(0)``
DTensors as full expert tensors directly, a sharded loader fills the local shard with plain row
slices, and the grad-norm of a DTensor counts every expert once. The cost: each replica holds its
ep group's share of the experts unsharded (memory E/ep per rank instead of E/(dp x cp)).

Gradients. The all-to-all backward sums, on an expert's rank, the contributions of every token of
its ep group. After the step's backward (all micro-batches) :func:`reduce_expert_grads` sums them
over the replicas and divides by dp x cp: the mean over the data ranks that FSDP2 takes for every
other parameter.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor

from mm_core.errors import ConfigError

EP_DIM, REPLICA_DIM = "ep", "ep_replica"  # dimension names of the experts' 2-D mesh


def check_expert_parallel(ep: int, dp: int, tp: int, cp: int) -> None:
    """``parallel.ep``: 1, or a divisor of dp x cp (any tp: experts are replicated over tp)."""
    if ep < 1:
        raise ConfigError(f"parallel.ep: must be >= 1, got {ep}")
    if ep > 1 and (dp * cp) % ep:
        raise ConfigError(f"parallel.ep: {ep} must divide data parallel x context parallel = {dp} x {cp} = {dp * cp} "
                          f"(experts are sharded over those ranks, never over parallel.tp {tp} or the pipeline "
                          "stages); choose a divisor of it or change the layout")


def ep_group(par) -> dist.ProcessGroup:  # noqa: ANN001 - mm_core.engine.mesh.Parallel
    """This rank's ep group (``par.ep`` consecutive ranks of its data mesh; ``build_mesh``
    takes it from ``parallel.ep``), for the token all-to-alls only, so that they never share one
    channel (and its order) with FSDP2's asynchronous all-gathers and reduce-scatters on the data group."""
    ep = par.ep
    if ep < 2:
        raise ConfigError(f"parallel.ep: {ep} on the engine's Parallel (par.ep); expert parallel needs ep >= 2")
    grid = par.mesh.mesh  # ranks [pp, dp, cp, tp]
    mine = None
    for p in range(grid.shape[0]):  # every rank creates every group, in the same order
        for t in range(grid.shape[3]):
            data = grid[p, :, :, t].reshape(-1).tolist()  # the data mesh's order: dp-major, cp-minor
            for start in range(0, len(data), ep):
                group = dist.new_group(ranks=data[start:start + ep])
                if par.rank in data[start:start + ep]:
                    mine = group
    assert mine is not None
    return mine


# (data mesh object, ep) -> (that mesh, kept alive so its id stays its own; its expert mesh): one per
# mesh object, not per equal-looking mesh, since a later run's groups may be new ones
_MESHES: dict[tuple[int, int], tuple[DeviceMesh, DeviceMesh]] = {}


def expert_mesh(data_mesh: DeviceMesh, ep: int) -> DeviceMesh:
    """The 2-D ``(ep_replica, ep)`` mesh of ``data_mesh``, made once for all the stages of a rank
    (every rank calls this: it creates process groups)."""
    key = (id(data_mesh), ep)
    if key not in _MESHES:
        _MESHES[key] = data_mesh, data_mesh._unflatten(0, (data_mesh.size() // ep, ep), (REPLICA_DIM, EP_DIM))
    return _MESHES[key][1]


def shard_stage_experts(model: torch.nn.Module, mesh: DeviceMesh, group: dist.ProcessGroup, what: str) -> int:
    """Shard ``model``'s experts over ``group`` (:func:`ep_group`) as DTensors on the expert mesh
    derived from ``mesh`` (the data mesh); returns the MoE layers sharded. Works on meta tensors."""
    shard = getattr(model, "shard_experts", None)
    if shard is None:
        raise ConfigError(f"parallel.ep: {what} has no experts to shard (no shard_experts); set parallel.ep 1")
    ep = dist.get_world_size(group)
    if mesh.size() % ep:
        raise ConfigError(f"parallel.ep: {ep} does not divide the data mesh's {mesh.size()} ranks")
    emesh = expert_mesh(mesh, ep)
    mine = sorted(dist.get_process_group_ranks(group))
    if sorted(emesh[EP_DIM].mesh.reshape(-1).tolist()) != mine:
        raise RuntimeError(f"expert parallel: the token group {mine} is not the expert mesh's ep dimension "
                           f"{emesh[EP_DIM].mesh.tolist()}")
    return shard(emesh, group)


def _is_expert(p: torch.Tensor) -> bool:
    names = p.device_mesh.mesh_dim_names if isinstance(p, DTensor) else None
    return bool(names) and EP_DIM in names


def expert_params(module: torch.nn.Module) -> set[torch.nn.Parameter]:
    """The parameters sharded by expert parallel (FSDP2 must ignore them): DTensors on an expert
    mesh, recognised by the mesh (which survives ``to_empty``) rather than by a tag."""
    return {p for p in module.parameters() if _is_expert(p)}


def reduce_expert_grads(modules: list[torch.nn.Module]) -> int:
    """After the step's backward: each expert gradient summed over its replicas and divided by the
    data ranks (replicas x ep), FSDP2's mean; returns the gradients reduced. Every rank's experts
    get a gradient (zeros where no token came), so the replicas, the grad-norm and the optimizer
    see the same parameters on every rank, as one process's stacked experts do."""
    n = 0
    for m in modules:
        for p in m.parameters():  # the same order on every replica (a set's would not be)
            if not (p.requires_grad and _is_expert(p)):
                continue
            if p.grad is None:  # no token reached this rank's experts: zeros, like the whole stack's rows
                p.grad = torch.zeros_like(p)
            mesh = p.device_mesh
            g = p.grad.to_local()
            if mesh[REPLICA_DIM].size() > 1:
                dist.all_reduce(g, group=mesh.get_group(REPLICA_DIM))
            g.div_(mesh.size())
            n += 1
    return n
