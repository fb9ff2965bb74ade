"""Build this rank's pipeline stage(s): construct (on the meta device), freeze, tp plan, expert
parallel, LoRA, FSDP2, then materialise and load only this rank's shards."""

from __future__ import annotations

import contextlib
import importlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from mm_core.contracts import StageModel, require
from mm_core.engine.config import FinetuneConfig, Layout
from mm_core.engine.expert_parallel import ep_group, expert_params, shard_stage_experts
from mm_core.engine.mesh import Parallel
from mm_core.engine.names import StageNames
from mm_core.engine.pipeline_grads import grad_anchor
from mm_core.engine.row_order import gated_parameters
from mm_core.engine.sharded_load import DataShard, StreamTensor
from mm_core.errors import ConfigError
from mm_core.specs import ModelSpec

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OUTPUT_LAYER = "text_decoder.output_layer"  # mm name of the LM head (its weight is read by the loss)
EMBEDDING = "text_decoder.embedding.word_embeddings"
# tied models on a pipeline: the last stage's own LM head copy is the word embedding
TIED_ALIASES = {f"{OUTPUT_LAYER}.weight": f"{EMBEDDING}.weight"}


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

    Families follow one calling convention: ``model(*stage_input, **batch, return_hidden=True)``
    with the previous stage's output as the positional argument (none on the first stage).
    ``forward(*inputs)`` is what the pipeline schedule calls: the micro-batch comes from ``feed``
    (set by the trainer each step) by its index, which travels with the hidden states. A stage
    output whose first dimension varies between micro-batches (visual features ``[N, H]``) is
    padded to ``max_rows`` and sent with its true row count, because the schedule fixes the
    shapes it exchanges at the first step.
    """

    def __init__(self, model: nn.Module, stage: int, num_stages: int, names: StageNames):
        super().__init__()
        self.model = model
        self.stage, self.num_stages, self.names = stage, num_stages, names
        self.is_first, self.is_last = stage == 0, stage == num_stages - 1
        self.max_rows = 0  # set per step by the pipeline runner (4 x micro-batch tokens)
        self.gated: dict[str, tuple[int, int]] = {}  # tp-blocked parameters (model-relative names) -> (tp, parts)
        self.feed: list[Any] = []
        # (device type, dtype) when the stage is not wrapped by FSDP2 but computes in a lower
        # precision (see ``_apply_fsdp``)
        self.autocast: tuple[str, torch.dtype] | None = None
        self.loss_fn: Callable[[torch.Tensor, Any, nn.Module], torch.Tensor] | None = None

    def set_feed(self, feed: list[Any]) -> None:
        self.feed = feed

    def set_requires_gradient_sync(self, requires: bool) -> None:
        """FSDP2's switch (reduce gradients on the last micro-batch only). FSDP2 puts its own class
        first in the wrapped stage's bases, so this no-op is what a plain (unsharded) stage runs."""

    def _precision(self) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.autocast[0], dtype=self.autocast[1])

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        index = inputs[-1] if self.is_first else inputs[1]
        mb = self.feed[int(index.reshape(-1)[0])]
        prev: tuple[torch.Tensor, ...] = ()
        if not self.is_first:
            rows = int(inputs[2].reshape(-1)[0])
            prev = (inputs[0][:rows] if rows >= 0 else inputs[0],)
        with self._precision():
            out = self.model(*prev, **mb.batch, return_hidden=True)
            if isinstance(out, DTensor):
                out = out.full_tensor()
            if self.is_last:
                assert self.loss_fn is not None
                loss = torch.stack([self.loss_fn(out, mb, self.model)])  # [1]: the schedule concatenates outputs
                return grad_anchor(loss, inputs)
        if not out.requires_grad and out.is_floating_point():
            out = out.detach().requires_grad_()  # a frozen stage: backward ends here, computes nothing
        # every received input gets a gradient (zeros where unused): torch 2.11 needs one per input
        out = grad_anchor(out, inputs)
        index = index.detach()  # passed on as data: never an output with a gradient to send back
        rows = torch.full((1,), -1.0, device=out.device)
        if out.dim() == 2:  # a varying number of rows (vision tokens): pad to a fixed shape
            if out.shape[0] > self.max_rows:
                raise RuntimeError(f"pipeline stage {self.stage} produced {out.shape[0]} rows, more than the "
                                   f"{self.max_rows} (4 per token) the engine reserves between stages")
            rows.fill_(out.shape[0])
            out = torch.cat([out, out.new_zeros(self.max_rows - out.shape[0], out.shape[1])])
        return out, index, rows


def output_weight(model: StageModel) -> torch.Tensor:
    """The LM head weight (a DTensor under tensor parallel: the loss works on its vocabulary shards)."""
    return model.output_weight()


@dataclass
class Stages:
    """This rank's stage modules (several with virtual pipeline chunks) and their indices."""

    modules: list[EngineStage]
    indices: list[int]
    spec: ModelSpec


def _layer_lists(model: nn.Module) -> list[nn.Module]:
    return [m for name, m in model.named_modules() if name.endswith("layers") and isinstance(m, nn.ModuleList)]


def frozen_groups(cfg: FinetuneConfig, spec: ModelSpec) -> list[str]:
    """``model.freeze`` when the config gives it (``[]`` trains everything), else the model's own
    default (``ModelSpec.default_freeze``: what its reference recipe freezes, e.g. GLM-4.5V's vision)."""
    return list(cfg.model.freeze) if cfg.model.freeze is not None else list(spec.default_freeze)


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


def _apply_tp(model: nn.Module, spec: ModelSpec, par: Parallel, sequence_parallel: bool = False,
              derived: Callable[[nn.Module], dict[str, Any]] | None = None) -> dict[str, tuple[int, int]]:
    """Apply the tensor-parallel plan; returns the tp-blocked parameters (see ``row_order``).

    A family's plan is derived from its converter's rules (``derived``, see ``tp_rules``); a spec
    without a converter (test models) brings its own ``tp_plan``.
    """
    from torch.distributed.tensor.parallel import parallelize_module

    if sequence_parallel and not model.supports_sequence_parallel:
        raise ConfigError(f"parallel.sequence_parallel: model '{spec.name}' does not support it "
                          f"({type(model).__name__}.supports_sequence_parallel is False); set it false")
    if spec.tp_plan is not None:
        plan = spec.tp_plan(model, sequence_parallel=True) if sequence_parallel else spec.tp_plan(model)
    elif derived is not None:
        plan = derived(model)
    else:
        raise ConfigError(f"parallel.tp: model '{spec.name}' has neither a converter (whose rules give the "
                          f"tensor-parallel splits) nor a tp_plan; use parallel.tp 1")
    if plan:
        parallelize_module(model, par.mesh["tp"], plan)
    return gated_parameters(model, plan or {}, par.tp)


def rules_tp_plan(cfg: FinetuneConfig, spec: ModelSpec, hf_config: dict[str, Any], stage: int,
                  tp: int) -> Callable[[nn.Module], dict[str, Any]] | None:
    """The plan of stage ``stage`` derived from the family's converter rules (None without a converter)."""
    if spec.converter is None:
        return None
    from mm_core.engine.tp_rules import plan_from_rules

    layers = {"vit": cfg.model.vit_pp_layers, "llm": cfg.model.llm_pp_layers}
    return lambda model: plan_from_rules(model, spec.converter, hf_config, tp, layers=layers, stage=stage,
                                         sequence_parallel=cfg.parallel.sequence_parallel)


def recompute_layers(model: nn.Module, first: int | None = None) -> int:
    """Activation recomputation for the first ``first`` layers of each layer list (all: None).

    The layer's own ``forward`` is replaced by one that runs it under non-reentrant
    ``torch.utils.checkpoint``, so the module, its parameter names and the hooks that tp, FSDP2
    and ``Module.compile`` put around its call all stay as they are. Returns how many layers.
    """
    n = 0
    for layers in _layer_lists(model):
        for layer in list(layers)[:first]:
            layer.forward = _recomputed(layer.forward)
            n += 1
    return n


def _recomputed(forward: Callable[..., Any]) -> Callable[..., Any]:
    from torch.utils.checkpoint import checkpoint

    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():  # inference / no-grad probes: nothing to save anyway
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def compile_layers(model: nn.Module, backend: str, device_type: str | None = None) -> int:
    """``torch.compile`` every layer of the model's layer lists in place (``Module.compile`` keeps
    the module, its names and its parameters, so tp, FSDP2 and checkpoints see no difference).
    Layers are the unit because they repeat: one graph serves them all. Returns how many."""
    from mm_core.engine.compile_logs import quiet_cuda_home_warning
    from mm_core.kernels.registry import resolve_kernels

    quiet_cuda_home_warning()  # inductor's import of cpp_extension would warn about CUDA_HOME on CPU
    # a meta-built model is compiled before it is materialised: the device it will run on decides
    devices = {device_type} if device_type is not None else {p.device.type for p in model.parameters()}
    for kind in devices:
        resolve_kernels(kind)  # compiled code reads the chosen kernels, never the plugin lookup
    n = 0
    for layers in _layer_lists(model):
        for layer in layers:
            layer.compile(backend=backend)
            n += 1
    return n


def _apply_fsdp(stage: EngineStage, cfg: FinetuneConfig, par: Parallel) -> DeviceMesh | None:
    """FSDP2 over the data-parallel mesh (x cp, flattened, under context parallel; each decoder/ViT
    layer a unit), with its mixed precision.

    With one data-parallel rank there is nothing to shard: the stage stays a plain module
    (``parallel.fsdp auto``) and a lower compute precision comes from ``torch.autocast``; the
    fp32 result is the same as under FSDP2 (tested), without its per-layer bookkeeping.
    Returns the mesh it sharded over (None: not sharded).
    """
    dtype = DTYPES[cfg.training.dtype]
    if par.dp * par.cp == 1 and cfg.parallel.fsdp == "auto":
        stage.autocast = None if dtype == torch.float32 else (par.device.type, dtype)
        return None
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    mesh = par.data_mesh if par.data_mesh is not None else par.mesh["dp"]  # dp x cp under context parallel
    ignored = expert_params(stage) or None  # sharded by expert parallel instead
    for layers in _layer_lists(stage.model):
        for layer in layers:
            if any(True for _ in layer.parameters()):
                fully_shard(layer, mesh=mesh, mp_policy=mp, reshard_after_forward=cfg.parallel.reshard_after_forward,
                            ignored_params=ignored)
    fully_shard(stage, mesh=mesh, mp_policy=mp, reshard_after_forward=cfg.parallel.reshard_after_forward,
                ignored_params=ignored)
    return mesh


def random_full_state(spec: ModelSpec, hf_config: dict[str, Any], vit_total: int, llm_total: int,
                      seed: int) -> dict[str, torch.Tensor]:
    """The whole model's initial weights from the seed: the same on every rank and layout."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        whole = spec.builder(hf_config, vit_pp_layers=[vit_total], llm_pp_layers=[llm_total], pp_rank=0,
                             device="cpu", dtype=torch.float32)
    return {k: v.detach() for k, v in whole.state_dict().items()}


def _stage_from_full(model: nn.Module, names: StageNames, full: dict[str, torch.Tensor], stage: int) -> None:
    """Copy this stage's share of the whole model's weights into ``model``."""
    expected = set(model.state_dict())
    weights = {}
    for k, v in full.items():
        local = names.to_local(k)
        if local is not None and local in expected:
            weights[local] = v
    for head, emb in TIED_ALIASES.items():
        if head in expected and head not in weights and emb in full:
            weights[head] = full[emb]
    missing = sorted(expected - set(weights))
    if missing:
        raise ConfigError(f"model weights for stage {stage}: missing {missing[:5]}; the stage does not match "
                          "the model config")
    model.load_state_dict(weights, strict=True)


@contextlib.contextmanager
def _checkpoint_stream(cfg: FinetuneConfig, spec: ModelSpec, layout: Layout, stage: int,
                       par: Parallel) -> Iterator[tuple[list[StreamTensor], str, str]]:
    """This (tp rank, stage)'s tensors in the HF dir (through the converter) or the mm dir, not yet
    read, with a description of the source and the fix for a mismatch."""
    from mm_core.checkpoint.api import open_hf_rank
    from mm_core.nn.pretrained import check_mm_layout, layout_flags, mm_stage_tensors, rank_and_chunk

    assert spec.converter is not None
    vit, llm = (cfg.model.vit_pp_layers, cfg.model.llm_pp_layers) if layout.pp > 1 else (None, None)
    if cfg.model.mm_dir:
        fix = check_mm_layout(cfg.model.mm_dir, spec.converter, tp_size=par.tp, vit_pp_layers=vit, llm_pp_layers=llm)
        yield (mm_stage_tensors(cfg.model.mm_dir, tp_rank=par.tp_rank, stage=stage, vit_pp_layers=vit,
                                llm_pp_layers=llm),
               f"mm checkpoint {cfg.model.mm_dir} (tp rank {par.tp_rank}, pp stage {stage})", fix)
        return
    rank, chunk = rank_and_chunk(stage, vit, llm)
    with open_hf_rank(spec.converter, cfg.model.hf_dir, tp_size=par.tp, tp_rank=par.tp_rank, vit_pp_layers=vit,
                      llm_pp_layers=llm, pp_rank=rank) as stream:
        yield (stream.chunks[chunk or 0],
               f"HF checkpoint {cfg.model.hf_dir} (tp rank {par.tp_rank}/{par.tp}, pp stage {stage})",
               f"check that {cfg.model.hf_dir}/config.json belongs to these weights and that the layout "
               f"({layout_flags(par.tp, vit, llm)}) matches the model you built")


def load_stage_model(cfg: FinetuneConfig, spec: ModelSpec, hf_config: dict[str, Any], layout: Layout,
                     stage: int, par: Parallel) -> tuple[nn.Module, dict[str, int]]:
    """Stage ``stage`` built on the meta device with the tp plan applied, holding this tp rank's
    shards read from the HF dir (through the converter) or the mm dir, tensor by tensor (the
    tensor-parallel inference path: no FSDP2). Returns the model and its gated parameters."""
    from mm_core.engine.sharded_load import check_buffers, fill, regions
    from mm_core.nn.state import check_state

    if spec.converter is None:
        raise ConfigError(f"model '{spec.name}' registers no converter, so weights cannot be loaded; "
                          "set model.random_init true")
    model = spec.builder(hf_config, vit_pp_layers=layout.vit_pp_layers, llm_pp_layers=layout.llm_pp_layers,
                         pp_rank=stage, device="meta", dtype=torch.float32)
    require(model, StageModel, f"model '{spec.name}'")
    freeze(model, spec, frozen_groups(cfg, spec))
    gated = _apply_tp(model, spec, par, cfg.parallel.sequence_parallel,
                      rules_tp_plan(cfg, spec, hf_config, stage, par.tp)) if par.tp > 1 else {}
    with _checkpoint_stream(cfg, spec, layout, stage, par) as (stream, source, fix):
        check_state(model, {t.key: t.meta for t in stream}, source=source, fix=fix)
        before = regions(model)
        model.to_empty(device=par.device)
        check_buffers(model, f"model '{spec.name}'")
        fill(model, stream, before, None, set(), source=source)
    return model, gated


def _reads_weights(cfg: FinetuneConfig) -> bool:
    """False when ``output.load`` names a checkpoint that will overwrite every weight (DCP loads
    straight into the sharded parameters); with LoRA it holds only the adapters."""
    from mm_core.engine.trainer import _resume_path

    return cfg.lora is not None or _resume_path(cfg) is None


def _parallelise(model: nn.Module, cfg: FinetuneConfig, spec: ModelSpec, hf_config: dict[str, Any], par: Parallel,
                 names: StageNames, gated: dict[str, tuple[int, int]], tokens: Any, num_stages: int,
                 stage: int) -> EngineStage:
    """Expert parallel, LoRA, recomputation, compilation and FSDP2 on a tensor-parallel stage (real
    or on the meta device), in that order."""
    if cfg.parallel.ep > 1:  # experts sharded over the data mesh, before FSDP2 (engine/expert_parallel.py)
        shard_stage_experts(model, par.data_mesh if par.data_mesh is not None else par.mesh["dp"], tokens,
                            f"model '{spec.name}'")
    if cfg.lora is not None:  # adapters: after the tp plan, before FSDP2 (mm_core.lora)
        from mm_core.lora.engine import attach_to_stage

        attach_to_stage(model, cfg, spec, hf_config, names, gated)
    if cfg.training.recompute == "full":
        recompute_layers(model, cfg.training.recompute_num_layers)
    if cfg.training.compile:
        compile_layers(model, cfg.training.compile_backend, par.device.type)
    es = EngineStage(model, stage, num_stages, names)
    es.gated = gated
    return es


def _materialise(es: EngineStage, cfg: FinetuneConfig, spec: ModelSpec, par: Parallel,
                 stream: list[StreamTensor] | None, source: str) -> None:
    """FSDP2 on the meta stage, then ``to_empty`` and each rank's own shards filled from ``stream``
    (None: a checkpoint from ``output.load`` fills them later) and the LoRA adapters' start."""
    from mm_core.engine.sharded_load import (
        check_buffers,
        fill,
        lora_indices_on_cpu,
        lora_indices_to,
        lora_start,
        regions,
    )

    model = es.model
    lora_indices_on_cpu(model, es.gated)
    before = regions(model)
    ep = expert_params(model)
    sharded = {n for n, p in model.named_parameters() if p not in ep}
    mesh = _apply_fsdp(es, cfg, par)
    es.to_empty(device=par.device)
    lora_indices_to(model, par.device)
    check_buffers(model, f"model '{spec.name}'")
    if stream is None:
        return
    shard = DataShard(mesh.get_local_rank(), mesh.size()) if mesh is not None else None
    fill(model, itertools.chain(stream, lora_start(model, cfg.training.seed, before)), before, shard, sharded,
         source=source)


def build_stages(cfg: FinetuneConfig, layout: Layout, par: Parallel, spec: ModelSpec,
                 hf_config: dict[str, Any]) -> Stages:
    """Construct, load, freeze, tensor- and data-parallelise this rank's stages.

    From a checkpoint, a stage is built and parallelised on the meta device and each rank then
    reads only the shards it holds (``mm_core.engine.sharded_load``), so no rank ever holds the
    whole model, nor a whole tp piece of its stage. ``model.random_init`` builds the whole model
    from the seed (the same values on every layout) and shards it as before.
    """
    from mm_core.engine.config import model_layer_counts
    from mm_core.nn.state import check_state

    indices = [v * layout.pp + par.pp_rank for v in range(layout.virtual)]
    full = None
    if cfg.model.random_init:
        full = random_full_state(spec, hf_config, *model_layer_counts(hf_config), cfg.training.seed)
    elif spec.converter is None:
        raise ConfigError(f"model '{spec.name}' registers no converter, so weights cannot be loaded; "
                          "set model.random_init true")
    reads = full is None and _reads_weights(cfg)
    modules = []
    tokens = ep_group(par) if cfg.parallel.ep > 1 else None  # expert parallel's all-to-all group
    for stage in indices:
        names = StageNames(spec.pipeline_modules, layout.placement, stage)
        device = par.device if full is not None else torch.device("meta")
        model = spec.builder(hf_config, vit_pp_layers=layout.vit_pp_layers, llm_pp_layers=layout.llm_pp_layers,
                             pp_rank=stage, device=device, dtype=torch.float32)
        require(model, StageModel, f"model '{spec.name}'")
        if full is not None:
            _stage_from_full(model, names, full, stage)
        freeze(model, spec, frozen_groups(cfg, spec))
        gated = _apply_tp(model, spec, par, cfg.parallel.sequence_parallel,
                          rules_tp_plan(cfg, spec, hf_config, stage, par.tp)) if par.tp > 1 else {}
        with contextlib.ExitStack() as stack:
            stream, source = None, ""
            if reads:  # names and shapes checked before anything is sharded or read
                stream, source, fix = stack.enter_context(_checkpoint_stream(cfg, spec, layout, stage, par))
                check_state(model, {t.key: t.meta for t in stream}, source=source, fix=fix)
            es = _parallelise(model, cfg, spec, hf_config, par, names, gated, tokens, layout.num_stages, stage)
            if full is not None:
                _apply_fsdp(es, cfg, par)
            else:
                _materialise(es, cfg, spec, par, stream, source)
        modules.append(es)
    del full
    return Stages(modules, indices, spec)


def stages_for(cfg: FinetuneConfig) -> tuple[Parallel, Layout, Stages]:
    """What the trainer builds before data and optimizers: the process group (joined if not yet),
    the mesh and this rank's stages, for tests and benchmarks of loading alone."""
    from mm_core.engine.config import load_hf_config, validate
    from mm_core.engine.mesh import build_mesh, init_distributed

    device_type, _, world = init_distributed(cfg.parallel.device)
    hf_config = load_hf_config(cfg)
    layout = validate(cfg, world, hf_config)
    par = build_mesh(device_type, layout.pp, layout.tp, layout.cp, cfg.parallel.ep)
    return par, layout, build_stages(cfg, layout, par, resolve_spec(cfg, hf_config), hf_config)
