"""A model for inference sharded over ``tp`` processes, built and loaded as the engine builds a stage.

The family's converter rules give both the DTensor plan (``engine.tp_rules``) and each rank's
shard: the model is built on the meta device, parallelised, then filled with only this rank's
piece of the HF checkpoint (streamed through the converter) or its ``mp_rank`` file of an mm
checkpoint (``engine.model_setup.load_stage_model``). :func:`check_tp` asks the same rules whether
a tp size fits the model (heads, key/value heads, vocabulary) before any process loads anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mm_core.errors import ConfigError
from mm_core.specs import ModelSpec


@dataclass
class TPModel:
    """This rank's shard of the model and where it sits."""

    model: nn.Module
    group: Any  # the tp process group (generation broadcasts the chosen tokens over it)
    rank: int
    tp: int
    device: torch.device
    local_parameters: int  # elements this rank holds
    total_parameters: int  # elements of the whole model

    def summary(self) -> str:
        return (f"tp {self.tp}: rank {self.rank} holds {self.local_parameters / 1e6:.2f}M of the model's "
                f"{self.total_parameters / 1e6:.2f}M parameters")


def check_tp(spec: ModelSpec, hf_config: dict[str, Any], tp: int, *, field: str = "--tp") -> None:
    """Raise a ConfigError naming the config field when the model cannot be split ``tp`` ways
    (its plan is derived on a meta-device model: nothing is allocated or loaded)."""
    from mm_core.engine.tp_rules import plan_from_rules

    if tp < 1:
        raise ConfigError(f"{field} {tp}: must be >= 1")
    if tp == 1:
        return
    if spec.converter is None:
        raise ConfigError(f"{field} {tp}: model '{spec.name}' registers no converter, whose rules give the "
                          "tensor-parallel splits; use one process (--tp 1)")
    model = spec.builder(hf_config, vit_pp_layers=None, llm_pp_layers=None, pp_rank=0, device="meta",
                         dtype=torch.float32)
    try:
        plan_from_rules(model, spec.converter, hf_config, tp)
    except ConfigError as e:
        raise ConfigError(f"{field} {tp}: model '{spec.name}' cannot be split {tp} ways: {e}") from None


def load_tp_model(spec: ModelSpec, hf_config: dict[str, Any], model_dir: Path, *, mm: bool, device: str,
                  dtype: torch.dtype) -> TPModel:
    """Join the launched process group (tp = its size) and load this rank's shard of ``model_dir``."""
    import torch.distributed as dist

    from mm_core.engine.config import FinetuneConfig, Layout, ModelConfig, ParallelConfig, model_layer_counts
    from mm_core.engine.mesh import build_mesh, init_distributed
    from mm_core.engine.model_setup import load_stage_model
    from mm_core.layout import Placement

    device_type, _, world = init_distributed(device)
    check_tp(spec, hf_config, world)
    vit, llm = model_layer_counts(hf_config)
    placement = Placement({"vit": vit, "llm": llm}, {"vit": None, "llm": None}, world)
    cfg = FinetuneConfig(model=ModelConfig(name=spec.name, hf_dir=None if mm else str(model_dir),
                                           mm_dir=str(model_dir) if mm else None),
                         parallel=ParallelConfig(tp=world, device=device_type))
    par = build_mesh(device_type, 1, world)
    model, _ = load_stage_model(cfg, spec, hf_config, Layout(world, world, 1, 1, 1, placement), 0, par)
    model.to(dtype=dtype).eval()
    group = par.group("tp")
    params = list(model.parameters())
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in params)
    return TPModel(model, group, dist.get_rank(group), world, par.device, local, sum(p.numel() for p in params))
