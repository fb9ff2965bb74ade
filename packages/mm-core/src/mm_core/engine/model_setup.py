"""Build this rank's pipeline stage(s): construct, initialise or load, freeze, tp plan, FSDP2."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from mm_core.engine.config import FinetuneConfig, Layout
from mm_core.engine.mesh import Parallel
from mm_core.engine.names import StageNames
from mm_core.errors import ConfigError
from mm_core.specs import ModelSpec

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OUTPUT_LAYER = "text_decoder.output_layer"  # mm name of the LM head (its weight is read by the loss)


def resolve_spec(cfg: FinetuneConfig, hf_config: dict[str, Any]) -> ModelSpec:
    """``model.name`` (a registered name or ``module:ATTR``), else the plugin accepting the HF config."""
    from mm_core.plugins import get_plugin_manager

    name = cfg.model.name
    if name and ":" in name:
        module, attr = name.split(":", 1)
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"model.name: cannot import '{name}': {e}") from None
    pm = get_plugin_manager()
    return pm.model(name) if name else pm.model_for_hf_config(hf_config)


class EngineStage(nn.Module):
    """A stage model plus what the engine runs around it: the loss on the last stage.

    ``forward(*inputs)`` is what the pipeline schedule calls: the micro-batch comes from
    ``feed`` (set by the trainer each step) by its index, the last input (the first stage gets
    the index alone; later stages get ``(hidden, index)`` from the stage before).
    """

    def __init__(self, model: nn.Module, stage: int, num_stages: int, names: StageNames):
        super().__init__()
        self.model = model
        self.stage, self.num_stages, self.names = stage, num_stages, names
        self.is_first, self.is_last = stage == 0, stage == num_stages - 1
        self.feed: list[Any] = []
        self.loss_fn: Callable[[torch.Tensor, Any, nn.Module], torch.Tensor] | None = None

    def set_feed(self, feed: list[Any]) -> None:
        self.feed = feed

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        index = inputs[-1]  # the micro-batch number travels with the hidden states
        i = int(index.reshape(-1)[0]) if index.numel() else 0
        # the schedule's one-time shape inference may send a placeholder index: any micro-batch will do
        mb = self.feed[i if 0 <= i < len(self.feed) else 0]
        hidden = None if self.is_first else inputs[0]
        out = self.model(**mb.batch, hidden_states=hidden, return_hidden=True)
        if isinstance(out, DTensor):
            out = out.full_tensor()
        if self.is_last:
            assert self.loss_fn is not None
            return torch.stack([self.loss_fn(out, mb, self.model)])  # [1]: the schedule concatenates outputs
        if not out.requires_grad and out.is_floating_point():
            out = out.detach().requires_grad_()  # a frozen stage: backward ends here, computes nothing
        return out, index


def output_weight(model: nn.Module) -> torch.Tensor:
    """The LM head weight, gathered whole when tensor-parallel (the loss needs all vocabulary rows)."""
    w = model.get_submodule(OUTPUT_LAYER).weight
    return w.full_tensor() if isinstance(w, DTensor) else w


@dataclass
class Stages:
    """This rank's stage modules (several with virtual pipeline chunks) and their indices."""

    modules: list[EngineStage]
    indices: list[int]
    spec: ModelSpec


def _layer_lists(model: nn.Module) -> list[nn.Module]:
    return [m for name, m in model.named_modules() if name.endswith("layers") and isinstance(m, nn.ModuleList)]


def freeze(model: nn.Module, spec: ModelSpec, groups: list[str]) -> int:
    """requires_grad=False for the parameters of the named module groups; returns how many."""
    prefixes = []
    for g in groups:
        if g not in spec.module_groups:
            raise ConfigError(f"model.freeze: model '{spec.name}' has no module group '{g}'; "
                              f"it has: {', '.join(spec.module_groups)}")
        prefixes += list(spec.module_groups[g])
    n = 0
    for name, p in model.named_parameters():
        if any(name == pre or name.startswith(pre + ".") for pre in prefixes):
            p.requires_grad_(False)
            n += 1
    return n


def _apply_tp(model: nn.Module, spec: ModelSpec, par: Parallel) -> None:
    from torch.distributed.tensor.parallel import parallelize_module

    if spec.tp_plan is None:
        raise ConfigError(f"parallel.tp: model '{spec.name}' has no tensor-parallel plan; use parallel.tp 1")
    plan = spec.tp_plan(model)
    if plan:
        parallelize_module(model, par.mesh["tp"], plan)


def _apply_fsdp(stage: EngineStage, cfg: FinetuneConfig, par: Parallel) -> None:
    dtype = DTYPES[cfg.training.dtype]
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    mesh = par.mesh["dp"]
    for layers in _layer_lists(stage.model):
        for layer in layers:
            if any(True for _ in layer.parameters()):
                fully_shard(layer, mesh=mesh, mp_policy=mp, reshard_after_forward=cfg.parallel.reshard_after_forward)
    fully_shard(stage, mesh=mesh, mp_policy=mp, reshard_after_forward=cfg.parallel.reshard_after_forward)


def random_full_state(spec: ModelSpec, hf_config: dict[str, Any], vit_total: int, llm_total: int,
                      seed: int) -> dict[str, torch.Tensor]:
    """The whole model's initial weights from the seed: the same on every rank and layout."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        whole = spec.builder(hf_config, vit_pp_layers=[vit_total], llm_pp_layers=[llm_total], pp_rank=0,
                             device="cpu", dtype=torch.float32)
    return {k: v.detach() for k, v in whole.state_dict().items()}


def load_stage_weights(cfg: FinetuneConfig, spec: ModelSpec, hf_config: dict[str, Any], layout: Layout,
                       stage: int, names: StageNames, full: dict[str, torch.Tensor] | None,
                       expected: set[str]) -> dict[str, torch.Tensor]:
    """This stage's whole (tp-unsplit) weights in stage-local names."""
    if full is not None:  # the whole model's weights: keep what this stage holds
        out = {}
        for k, v in full.items():
            local = names.to_local(k)
            if local is not None and local in expected:
                out[local] = v
        return out
    try:
        from mm_convert import api as convert_api  # the converter's loading entry points
    except ImportError as e:
        raise ConfigError(f"model.hf_dir/mm_dir: loading weights needs mm_convert.api ({e}); "
                          "set model.random_init true to start from random weights") from None
    kwargs = dict(vit_pp_layers=layout.vit_pp_layers, llm_pp_layers=layout.llm_pp_layers, pp_rank=stage,
                  tp_size=1, tp_rank=0)
    if cfg.model.mm_dir:
        return dict(convert_api.read_mm_rank(cfg.model.mm_dir, **kwargs))
    return dict(convert_api.hf_to_mm_rank(cfg.model.hf_dir, **kwargs))


def build_stages(cfg: FinetuneConfig, layout: Layout, par: Parallel, spec: ModelSpec,
                 hf_config: dict[str, Any]) -> Stages:
    """Construct, load, freeze, tensor- and data-parallelise this rank's stages."""
    from mm_core.engine.config import model_layer_counts

    indices = [v * layout.pp + par.pp_rank for v in range(layout.virtual)]
    full = None
    if cfg.model.random_init:
        full = random_full_state(spec, hf_config, *model_layer_counts(hf_config), cfg.training.seed)
    modules = []
    for stage in indices:
        model = spec.builder(hf_config, vit_pp_layers=layout.vit_pp_layers, llm_pp_layers=layout.llm_pp_layers,
                             pp_rank=stage, device=par.device, dtype=torch.float32)
        names = StageNames(spec.pipeline_modules, layout.vit_pp_layers, layout.llm_pp_layers, stage)
        weights = load_stage_weights(cfg, spec, hf_config, layout, stage, names, full, set(model.state_dict()))
        missing, unexpected = _check_keys(model, weights)
        if missing or unexpected:
            raise ConfigError(f"model weights for stage {stage}: missing {missing[:5]}, unexpected {unexpected[:5]}; "
                              "the checkpoint does not match the model config or layout")
        model.load_state_dict(weights, strict=False)
        freeze(model, spec, cfg.model.freeze)
        if par.tp > 1:
            _apply_tp(model, spec, par)
        es = EngineStage(model, stage, layout.num_stages, names)
        _apply_fsdp(es, cfg, par)
        modules.append(es)
    del full
    return Stages(modules, indices, spec)


def _check_keys(model: nn.Module, weights: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    expected = set(model.state_dict().keys())
    got = set(weights)
    return sorted(expected - got), sorted(got - expected)


def trainable_parameters(stage: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in stage.named_parameters() if p.requires_grad]


def set_model_weights(stage: EngineStage, weights: dict[str, torch.Tensor]) -> None:
    """Load whole (unsharded) stage-local weights into a sharded stage."""
    set_model_state_dict(stage, {f"model.{k}": v for k, v in weights.items()},
                         options=StateDictOptions(full_state_dict=True))
