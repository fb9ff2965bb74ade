"""Worker of test_sharded_load (torchrun, 2 processes, gloo): a tiny GLM-4.5V built by the engine's
meta-device start under several layouts in one process group, each rank's shards compared with the
converter's whole per-rank state (``hf_to_mm_rank``, the dict path the engine used before), and the
bytes each rank read from the checkpoint counted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from mm_core.checkpoint import api
from mm_core.engine.config import DataConfig, FinetuneConfig, ModelConfig, ParallelConfig, TrainingConfig
from mm_core.engine.expert_parallel import expert_params
from mm_core.engine.mesh import init_distributed
from mm_core.engine.model_setup import stages_for
from mm_core.nn.state import _fitted, checkpoint_tensors

LAYOUTS = {  # name -> parallel settings (2 ranks)
    "dp2": {"fsdp": "auto"},
    "tp2": {"tp": 2},
    "pp2": {"pp": 2},
    "ep2": {"ep": 2},
    "dp2_mm": {"fsdp": "auto"},  # from the mm dir (``mm-convert GlmConverter hf_to_mm``) next to the HF dir
}
EXTRA = {"dp2tp2": {"tp": 2}}  # 4 processes: run by hand (``_sharded_load_worker.py OUT HF dp2tp2``)
READ: list[int] = []  # bytes of every tensor read from the checkpoint on this rank


def _count_reads() -> None:
    from mm_core.nn.pretrained import FileTensor

    for cls in (api.RankTensor, FileTensor):  # HF dir and mm dir
        def counted(self, rows=None, _read=cls.read):  # noqa: ANN001, ANN202
            t = _read(self, rows)
            READ.append(t.numel() * t.element_size())
            return t

        cls.read = counted  # type: ignore[method-assign]


def _check(name: str, hf_dir: str, rank: int) -> dict:
    par_kw = {**LAYOUTS, **EXTRA}[name]
    pp = par_kw.get("pp", 1)
    mm_dir = str(Path(hf_dir).parent / "mm") if name.endswith("_mm") else None
    model = ModelConfig(hf_dir=hf_dir, mm_dir=mm_dir, llm_pp_layers=[1, 2] if pp > 1 else None,
                        vit_pp_layers=[2, 0] if pp > 1 else None)
    cfg = FinetuneConfig(model=model, data=DataConfig(source="synthetic"), parallel=ParallelConfig(device="cpu", **par_kw),
                         training=TrainingConfig(dtype="fp32", global_batch_size=2, train_iters=1))
    READ.clear()
    par, _, stages = stages_for(cfg)
    spec = stages.spec
    read = sum(READ)
    es = stages.modules[0]
    if mm_dir is not None:  # the rank file as mm-convert wrote it
        ref = api.read_mm_rank(mm_dir)[0]
    else:
        ref = api.hf_to_mm_rank(spec.converter, hf_dir, tp_size=par.tp, tp_rank=par.tp_rank,
                                llm_pp_layers=model.llm_pp_layers, vit_pp_layers=model.vit_pp_layers,
                                pp_rank=par.pp_rank)
    bad, local_bytes = [], 0
    for key, p in checkpoint_tensors(es.model).items():
        local = p.to_local() if hasattr(p, "to_local") else p
        local_bytes += local.numel() * local.element_size()
        if par.tp > 1:  # this tp rank's piece, and of it this dp rank's rows (FSDP2 chunks dim 0)
            got = local
            want = _fitted(es.model, key, ref[key])
            if par.dp > 1 and isinstance(p, torch.nn.Parameter):  # FSDP2 shards parameters, not buffers
                rows = torch.chunk(want, par.dp, dim=0)
                want = rows[par.dp_rank] if par.dp_rank < len(rows) else want[:0]
        else:
            got, want = (p.full_tensor() if hasattr(p, "full_tensor") else p), ref[key]
        if got.dtype != torch.float32 and got.is_floating_point():
            bad.append(f"{key}: dtype {got.dtype}")
        if not torch.equal(got, want.to(got.dtype)):
            bad.append(f"{key}: differs from the converter's state")
    if name == "ep2" and not expert_params(es.model):
        bad.append("ep2: no expert-parallel parameters")
    if set(checkpoint_tensors(es.model)) != set(ref):
        bad.append(f"keys differ: {sorted(set(ref) ^ set(checkpoint_tensors(es.model)))[:4]}")
    ref_bytes = sum(t.numel() * 4 for t in ref.values())  # the fp32 stage as one rank held it before
    buffers = sum(b.numel() * b.element_size() for b in es.model.buffers())  # whole on every rank
    return {"bad": bad, "read": read, "local_bytes": local_bytes, "stage_bytes": ref_bytes, "buffer_bytes": buffers,
            "largest": max(t.numel() * t.element_size() for t in ref.values())}


def main(out_dir: str, hf_dir: str, *layouts: str) -> None:
    from mm_core.engine import sharded_load

    sharded_load.BLOCK_BYTES = 1024  # a few rows (one expert) a read: the block loop runs on every tensor
    _count_reads()
    init_distributed("cpu")
    rank = dist.get_rank()
    result = {name: _check(name, hf_dir, rank) for name in (layouts or LAYOUTS)}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
