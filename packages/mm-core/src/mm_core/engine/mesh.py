"""Process group and one DeviceMesh with (pp, dp, cp, tp) dimensions, on cpu/gloo, cuda/nccl or npu/hccl.

torch_npu is imported only when the device is ``npu``: importing it on a machine without the
Ascend toolkit breaks ``import torch``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}


def resolve_device(name: str) -> str:
    """The device type to run on; ``auto`` is cuda when visible, else cpu (ask for npu by name)."""
    if name == "npu":
        try:
            import torch_npu  # noqa: F401  (registers the npu device and the hccl backend)
        except ImportError as e:
            raise RuntimeError("parallel.device is 'npu' but torch_npu cannot be imported; install "
                               "the mm-core[npu] extra on a machine with the Ascend toolkit") from e
        return "npu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("parallel.device is 'cuda' but no CUDA device is visible")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


@dataclass
class Parallel:
    """Where this process sits: mesh, ranks and sizes."""

    mesh: DeviceMesh
    device: torch.device
    rank: int
    world_size: int
    pp: int
    dp: int
    tp: int
    pp_rank: int
    dp_rank: int
    tp_rank: int
    cp: int = 1
    cp_rank: int = 0
    # what FSDP2 shards over and reduces gradients on: ``dp``, or ``dp x cp`` flattened under
    # context parallel (cp ranks hold replicas whose gradients are partial sums)
    data_mesh: DeviceMesh | None = None
    # expert parallel (``parallel.ep``): MoE experts split over groups of ep consecutive data ranks
    # (engine/expert_parallel_mesh.py); 1 = every rank holds every expert
    ep: int = 1

    @property
    def is_last_stage_rank(self) -> bool:
        return self.pp_rank == self.pp - 1

    def group(self, dim: str) -> dist.ProcessGroup:
        return self.mesh.get_group(dim)


def init_distributed(device_name: str) -> tuple[str, int, int]:
    """Initialise the default process group (a 1-process group when not launched by torchrun)."""
    device_type = resolve_device(device_name)
    if dist.is_initialized():
        return device_type, dist.get_rank(), dist.get_world_size()
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    elif device_type == "npu":
        torch.npu.set_device(local_rank)  # type: ignore[attr-defined]
    backend = BACKENDS[device_type]
    if "MASTER_ADDR" in os.environ:
        dist.init_process_group(backend, rank=rank, world_size=world)
    else:  # a plain single process: an in-memory store is enough
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return device_type, rank, world


def build_mesh(device_type: str, pp: int, tp: int, cp: int = 1, ep: int = 1) -> Parallel:
    """One mesh ``(pp, dp, cp, tp)``: tp innermost (fastest links), then cp, pp outermost."""
    world = dist.get_world_size()
    dp = world // (pp * cp * tp)
    mesh = init_device_mesh(device_type, (pp, dp, cp, tp), mesh_dim_names=("pp", "dp", "cp", "tp"))
    coords = mesh.get_coordinate()
    assert coords is not None
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(device_type, local) if device_type != "cpu" else torch.device("cpu")
    data_mesh = mesh["dp"] if cp == 1 else mesh["dp", "cp"]._flatten("dp_cp")
    return Parallel(mesh, device, dist.get_rank(), world, pp, dp, tp, coords[0], coords[1], coords[3],
                    cp=cp, cp_rank=coords[2], data_mesh=data_mesh, ep=ep)


def shutdown(finished: bool = False) -> None:
    """Close the process groups. ``finished`` (every rank got through its work): a barrier first,
    so no rank closes its connections while a peer still reads the last collective's data (gloo
    then aborts the peer: 'terminate called without an active exception'). After an error there
    is no barrier: the other ranks may never reach it, and the launcher stops them anyway."""
    if dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()
