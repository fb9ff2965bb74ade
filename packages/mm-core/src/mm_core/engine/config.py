"""The `mm-run finetune` configuration: five sections (and an optional ``lora``), typed, checked before any worker starts.

``parse_finetune_config(argv)`` reads ``--config file.yaml`` plus ``--section.field value``
overrides; ``validate(cfg, world_size)`` checks the values against each other and against the
parallel layout and returns the derived sizes (data parallel, accumulation steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mm_core.data.config import DataConfig as PipelineDataConfig
from mm_core.errors import ConfigError
from mm_core.family.hf_config import layer_counts as model_layer_counts
from mm_core.family.hf_config import load_hf_config as load_hf_config_file
from mm_core.layout import Placement
from mm_core.lora.config import LoraConfig

FREEZABLE = ("vision_encoder", "vision_projector", "text_decoder")
OPTIMIZER_IMPLS = ("auto", "fused", "foreach")


@dataclass
class ModelConfig:
    """Which model, its initial weights, what to freeze and how it is cut into pipeline stages."""

    name: str | None = None  # registered model name, or "package.module:SPEC"; default: from the HF config
    hf_dir: str | None = None  # HF directory: config (and weights unless random_init)
    mm_dir: str | None = None  # mm directory (from mm-convert hf_to_mm) to load the weights from
    hf_config: dict[str, Any] | None = None  # inline HF-style config (tests, tiny models)
    random_init: bool = False  # initialise weights from the seed instead of loading them
    # module groups: vision_encoder, vision_projector, text_decoder; unset = the model's default
    # (nothing for most; GLM-4.5V: vision_encoder and vision_projector), [] = train everything
    freeze: list[str] | None = None
    vit_pp_layers: list[Any] | None = None  # vision layers per pp stage; nested = virtual chunks
    llm_pp_layers: list[Any] | None = None  # LLM layers per pp stage; nested = virtual chunks


@dataclass
class DataConfig:
    """Where micro-batches come from: the mllm data pipeline, or generated data for tests."""

    source: Literal["mllm", "synthetic"] = "mllm"
    # the data pipeline's own fields (data.json's four sections), typed: command-line overrides
    # such as --data.config.dataloader_param.num_workers 0 are checked and converted
    config: PipelineDataConfig | None = None
    data_json: str | None = None  # a data.json file of the reference system, instead of `config`
    synthetic_samples: int = 256
    synthetic_min_len: int = 8
    synthetic_max_len: int = 32
    synthetic_image_tokens: int = 4  # image tokens of generated samples (0 = text only)
    synthetic_image_size: int | None = None  # square images of this many pixels instead (e.g. 448)
    synthetic_images: int = 1  # images per sample with synthetic_image_size
    synthetic_text_only_every: int = 2  # every k-th sample has no image (0 = none)
    # text lengths between min and max: "uniform", or "lognormal" (median at their geometric mean, most
    # samples short and a long tail, like real SFT data; clipped to the range)
    synthetic_lengths: Literal["uniform", "lognormal"] = "uniform"
    # pack each micro-batch's micro_batch_size samples into as few rows of training.seq_length as they
    # fit (segment_ids per sample): the same samples per step as without packing, minus the padding
    synthetic_packing: bool = False
    shuffle: bool = True  # synthetic data: a new order every epoch


@dataclass
class ParallelConfig:
    """Parallel layout; data parallel is what the world size leaves after tp x pp x cp."""

    tp: int = 1
    pp: int = 1
    # context parallel: the text decoder's sequence split over cp ranks (mm_core.engine.context_parallel);
    # sequences are padded to a multiple of 2 x cp (x tp with sequence parallel)
    cp: int = 1
    # expert parallel: MoE experts sharded over groups of ep data-parallel ranks (ep divides dp x cp), tokens sent to their
    # expert's rank by all-to-all (mm_core.engine.expert_parallel)
    ep: int = 1
    pp_schedule: Literal["1F1B", "Interleaved1F1B", "GPipe"] = "1F1B"
    pp_pad_multiple: int = 256  # pp: a step's micro-batches are padded to a multiple of this (one schedule per length)
    device: Literal["auto", "cpu", "cuda", "npu"] = "auto"
    reshard_after_forward: bool = True
    # "auto": FSDP2 shards over data parallel when dp > 1; one data-parallel rank trains the plain
    # module (FSDP would only add its bookkeeping), with torch.autocast for bf16/fp16 compute.
    # "always": FSDP2 even when dp == 1 (its mixed precision casts the parameters instead).
    fsdp: Literal["auto", "always"] = "auto"
    # tp > 1: shard the LLM's activations between the tp regions over the sequence (Megatron-SP);
    # sequences are padded to a multiple of tp
    sequence_parallel: bool = False


@dataclass
class TrainingConfig:
    """Optimisation: batch sizes, length of training, schedule, precision and the loss."""

    micro_batch_size: int = 1
    global_batch_size: int = 1
    seq_length: int = 2048
    train_iters: int | None = None
    epochs: int | None = None
    lr: float = 1e-5
    min_lr: float = 0.0
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_iters: int = 0
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    # AdamW kernel: "auto" = fused wherever torch has the kernel (CPU and CUDA included; foreach on
    # NPU), "fused" = insist on it, "foreach" = the multi-tensor path (the same update, 3-5x slower on CPU)
    optimizer_impl: Literal["auto", "fused", "foreach"] = "auto"
    clip_grad: float = 1.0  # max global grad norm; 0 = no clipping
    dtype: Literal["fp32", "bf16", "fp16"] = "bf16"
    seed: int = 42
    loss_type: str = "default"
    compute_mode: Literal["default", "chunk", "dynamic_chunk"] = "default"
    chunk_size: int = 1024
    # MoE router balance loss weight (added to every loss type's loss): unset = the model config's
    # own router_aux_loss_coef (GLM-4.5V: 1e-4; 0 for models without one), a number overrides it,
    # 0 turns the loss off; the value used is printed at start (mm_core.engine.aux_loss)
    router_aux_loss_coef: float | None = None
    # activation recomputation (MindSpeed's recompute_granularity full): a layer keeps only its
    # input for backward and runs its forward again there; ~1/3 more compute for far less memory.
    # recompute_num_layers: the first N layers of each layer list of a stage (None: all of them)
    recompute: Literal["none", "full"] = "none"
    recompute_num_layers: int | None = None
    # torch.compile each transformer layer (ViT blocks and decoder layers) in place, before FSDP2
    # wraps it: fewer kernel launches and fused elementwise work; the first steps pay the compile
    compile: bool = False
    compile_backend: str = "inductor"  # "aot_eager": the same graphs without code generation (tests)


@dataclass
class OutputConfig:
    """Checkpoints and logs."""

    save: str | None = None
    save_interval: int = 0  # 0 = only at the end
    keep_last: int | None = None
    save_weights_only: bool = False
    load: str | None = None  # a save dir to resume from (its latest, or load_iteration)
    load_iteration: int | None = None
    log_interval: int = 1
    tensorboard_dir: str | None = None
    metrics_file: str | None = None  # JSONL; default <save>/metrics.jsonl
    progress_bar: bool = True


@dataclass
class FinetuneConfig:
    """mm-run finetune: model, data, parallel, training and output sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    lora: LoraConfig | None = None  # low-rank adapters on a frozen base (mm_core.lora); none when absent


@dataclass
class Layout:
    """Sizes derived from the config and the world size."""

    world_size: int
    tp: int
    pp: int
    dp: int
    grad_accum: int
    placement: Placement  # the layers of every stage (ranges, first/last stages, virtual chunks)
    cp: int = 1

    @property
    def virtual(self) -> int:
        """Pipeline chunks per pp rank."""
        return self.placement.vpp

    @property
    def vit_pp_layers(self) -> list[int]:
        """Vision layers per flattened stage (``v * pp + p``)."""
        return self.placement.flat_counts("vit")

    @property
    def llm_pp_layers(self) -> list[int]:
        return self.placement.flat_counts("llm")

    @property
    def num_stages(self) -> int:
        return self.pp * self.virtual


def parse_finetune_config(argv: Sequence[str], prog: str = "mm-run finetune") -> FinetuneConfig:
    from mm_core.config import parse_config

    return parse_config(FinetuneConfig, argv, prog=prog)


def load_hf_config(cfg: FinetuneConfig) -> dict[str, Any]:
    """The model's HF-style config dict: inline, the HF directory's config.json, or else the mm
    directory's (mm-convert copies config.json there, so an mm dir stands on its own)."""
    if cfg.model.hf_config is not None:
        return dict(cfg.model.hf_config)
    if cfg.model.hf_dir is None and cfg.model.mm_dir is not None:
        return load_hf_config_file(cfg.model.mm_dir, hint="model.mm_dir has no config.json (not written by "
                                   "mm-convert?): also give model.hf_dir, the original HF directory")
    if cfg.model.hf_dir is None:
        raise ConfigError("model.hf_dir: required (the HF directory to take the model config from), "
                          "or give model.hf_config inline")
    return load_hf_config_file(cfg.model.hf_dir, hint="point model.hf_dir at an HF model directory")


def _check_template(cfg: FinetuneConfig, hf_config: dict[str, Any]) -> None:
    """The data template fits the model (an unset one becomes the model's formatter)."""
    from mm_core.data.config import load_data_config
    from mm_core.data.template import resolve_template
    from mm_core.engine.model_setup import resolve_spec

    spec = resolve_spec(cfg, hf_config)
    if cfg.data.config is not None:
        resolve_template(cfg.data.config, spec, field="data.config.basic_parameters.template")
    else:
        path = cfg.data.data_json
        resolve_template(load_data_config(path), spec, field=f"data.data_json {path}: basic_parameters.template")


def _check_packing(cfg: FinetuneConfig, pp: int) -> None:
    """``basic_parameters.packing_samples`` is a known mode that the parallel layout can run."""
    from mm_core.data.config import PACKING_SAMPLES, load_data_config

    data = cfg.data.config if cfg.data.config is not None else load_data_config(cfg.data.data_json)
    b, where = data.basic_parameters, "data.config" if cfg.data.config is not None else f"data.data_json {cfg.data.data_json}"
    if b.packing_samples not in PACKING_SAMPLES:
        raise ConfigError(f"{where}: basic_parameters.packing_samples: unknown value '{b.packing_samples}'; "
                          f"valid: {', '.join(PACKING_SAMPLES)}")
    if b.packing and b.packing_samples == "fixed" and pp > 1:
        raise ConfigError(f"{where}: basic_parameters.packing_samples fixed packs each micro-batch into as many "
                          f"rows as it needs, and pipeline stages (parallel.pp = {pp}) exchange one shape per "
                          "step; use packing_samples fill, or parallel.pp 1")


def _check_context_parallel(cfg: FinetuneConfig) -> None:
    """``parallel.cp`` fits the sequence length and the features it runs with."""
    from mm_core.engine.context_parallel import cp_multiple

    p, t = cfg.parallel, cfg.training
    if p.cp == 1:
        return
    multiple = cp_multiple(p.cp, p.tp, p.sequence_parallel)
    if t.seq_length % multiple:
        what = "2 x cp x tp (sequence parallel)" if p.sequence_parallel else "2 x cp"
        raise ConfigError(f"training.seq_length: {t.seq_length} is not a multiple of {what} = {multiple}; each cp "
                          f"rank holds two equal chunks of the sequence (parallel.cp = {p.cp})")
    if t.compile:
        raise ConfigError("training.compile: compiled layers with context parallel (its K/V all-gather inside "
                          "attention) are not supported yet; set training.compile false or parallel.cp 1")


def _placement(m: ModelConfig, pp: int, tp: int, vit_total: int, llm_total: int) -> Placement:
    """The pipeline placement of the config's layer lists (``model.*_pp_layers``), checked against ``pp``."""
    for name, value in (("vit_pp_layers", m.vit_pp_layers), ("llm_pp_layers", m.llm_pp_layers)):
        if value is None and pp > 1:
            raise ConfigError(f"model.{name}: required when parallel.pp = {pp} (one layer count per stage)")
        flat = [n for c in value for n in (c if isinstance(c, (list, tuple)) else [c])] if value else []
        if any((not isinstance(n, int)) or n < 0 for n in flat):
            raise ConfigError(f"model.{name}: {value} must hold non-negative integers")
    placement = Placement({"vit": vit_total, "llm": llm_total},
                          {"vit": m.vit_pp_layers, "llm": m.llm_pp_layers}, tp, field="model.")
    if placement.pp != pp:
        raise ConfigError(f"model.llm_pp_layers/vit_pp_layers: {m.llm_pp_layers} / {m.vit_pp_layers} have "
                          f"{placement.pp} entries per chunk, parallel.pp is {pp}")
    return placement


def validate(cfg: FinetuneConfig, world_size: int, hf_config: dict[str, Any] | None = None) -> Layout:
    """Check the config; raise ConfigError naming the field. Never starts anything."""
    from mm_core.plugins import get_plugin_manager

    p, t, m, o = cfg.parallel, cfg.training, cfg.model, cfg.output
    for name, value in (("parallel.tp", p.tp), ("parallel.pp", p.pp), ("parallel.cp", p.cp),
                        ("training.micro_batch_size", t.micro_batch_size),
                        ("training.global_batch_size", t.global_batch_size), ("training.seq_length", t.seq_length),
                        ("training.chunk_size", t.chunk_size), ("output.log_interval", o.log_interval)):
        if value < 1:
            raise ConfigError(f"{name}: must be >= 1, got {value}")
    if world_size % (p.tp * p.pp * p.cp):
        raise ConfigError(f"parallel: tp x pp x cp = {p.tp} x {p.pp} x {p.cp} = {p.tp * p.pp * p.cp} does not divide "
                          f"the world size {world_size} (data parallel takes the rest); change parallel.tp/pp/cp or "
                          "the number of processes")
    if p.sequence_parallel and p.tp == 1:
        raise ConfigError("parallel.sequence_parallel: needs parallel.tp > 1 (it shards over the tp ranks); "
                          "set it false or raise parallel.tp")
    _check_context_parallel(cfg)
    dp = world_size // (p.tp * p.pp * p.cp)
    from mm_core.engine.expert_parallel import check_expert_parallel

    check_expert_parallel(p.ep, dp, p.tp, p.cp)
    if t.global_batch_size % (t.micro_batch_size * dp):
        raise ConfigError(f"training.global_batch_size: {t.global_batch_size} is not a multiple of "
                          f"micro_batch_size x data parallel = {t.micro_batch_size} x {dp}")
    ga = t.global_batch_size // (t.micro_batch_size * dp)
    if (t.train_iters is None) == (t.epochs is None):
        raise ConfigError("training: give exactly one of training.train_iters and training.epochs")
    if t.lr <= 0 or t.min_lr < 0 or t.min_lr > t.lr:
        raise ConfigError(f"training.lr/min_lr: need 0 <= min_lr <= lr and lr > 0, got lr={t.lr} min_lr={t.min_lr}")
    if t.optimizer_impl not in OPTIMIZER_IMPLS:
        raise ConfigError(f"training.optimizer_impl: unknown value '{t.optimizer_impl}'; "
                          f"valid: {', '.join(OPTIMIZER_IMPLS)}")
    if not 0.0 <= t.warmup_ratio < 1.0:
        raise ConfigError(f"training.warmup_ratio: must be in [0, 1), got {t.warmup_ratio}")
    pm = get_plugin_manager()
    try:
        pm.loss(t.loss_type)
    except Exception as e:
        raise ConfigError(f"training.loss_type: {e}") from None
    for g in m.freeze or ():
        if g not in FREEZABLE:
            raise ConfigError(f"model.freeze: unknown module group '{g}'; valid: {', '.join(FREEZABLE)}")
    if not m.random_init and m.hf_dir is None and m.mm_dir is None:
        raise ConfigError("model: give model.hf_dir or model.mm_dir to load weights from, or set model.random_init")
    if o.save_interval < 0 or (o.keep_last is not None and o.keep_last < 1):
        raise ConfigError("output.save_interval must be >= 0 and output.keep_last >= 1")
    if o.save_interval and not o.save:
        raise ConfigError("output.save_interval: set output.save (the checkpoint directory) too")
    if o.load is not None and not Path(o.load).is_dir():
        raise ConfigError(f"output.load: '{o.load}' is not a directory")
    if cfg.data.source == "mllm" and cfg.data.config is None and not cfg.data.data_json:
        raise ConfigError("data: give data.config (the data pipeline's fields) or data.data_json")
    hf_config = hf_config if hf_config is not None else load_hf_config(cfg)
    from mm_core.engine.aux_loss import announce, resolve_aux_loss_coef

    t.router_aux_loss_coef, note = resolve_aux_loss_coef(t.router_aux_loss_coef, hf_config)
    announce(note)
    if cfg.data.source == "mllm":
        _check_template(cfg, hf_config)
        _check_packing(cfg, p.pp)
    if p.pp == 1 and p.pp_schedule == "Interleaved1F1B":
        raise ConfigError("parallel.pp_schedule: Interleaved1F1B needs parallel.pp > 1")
    vit_total, llm_total = model_layer_counts(hf_config)
    placement = _placement(m, p.pp, p.tp, vit_total, llm_total)
    vit, llm, v1 = placement.flat_counts("vit"), placement.flat_counts("llm"), placement.vpp
    if any(vit[i] == 0 and llm[i] == 0 for i in range(len(vit))):
        raise ConfigError(f"model.vit_pp_layers/llm_pp_layers: a pipeline stage has no layers "
                          f"(vit {m.vit_pp_layers}, llm {m.llm_pp_layers})")
    if v1 > 1 and p.pp_schedule != "Interleaved1F1B":
        raise ConfigError("parallel.pp_schedule: nested layer lists (virtual chunks) need Interleaved1F1B")
    if p.pp > 1 and ga < 1:
        raise ConfigError("training: pipeline parallel needs at least one micro-batch per step")
    if cfg.lora is not None:
        from mm_core.engine.model_setup import resolve_spec
        from mm_core.lora.config import check_against_model

        check_against_model(cfg.lora, resolve_spec(cfg, hf_config), hf_config, {"vit": vit_total, "llm": llm_total})
    return Layout(world_size, p.tp, p.pp, dp, ga, placement, cp=p.cp)
