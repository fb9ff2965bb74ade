"""The model `mm-run infer` answers with: in this process, or this rank's tensor-parallel shard.

``--model`` is an HF directory or an mm checkpoint (its config.json then comes from
``--processor``). With one process the whole model is loaded (``nn.pretrained``); launched over N
processes each rank loads only its tp shard (``mm_core.inference.tensor_parallel``).
:func:`check_model` runs before any worker starts, so a tp size the model's heads do not allow is
refused naming the config field, and no process loads anything.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mm_core.cli.infer_inputs import resolve_model
from mm_core.errors import ConfigError
from mm_core.specs import ModelSpec

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


@dataclass
class ModelSource:
    """Where the weights, the processor files and the model config come from."""

    model_dir: Path
    proc_dir: Path
    mm: bool  # an mm checkpoint (mp_rank files), else an HF directory

    @property
    def gen_dir(self) -> Path:
        """Where generation_config.json is looked for (an mm dir usually has none)."""
        return self.model_dir if (self.model_dir / "generation_config.json").is_file() else self.proc_dir


@dataclass
class Loaded:
    """The model of this process and how generation runs around it."""

    model: Any
    device: Any
    tp_group: Any  # None with one process
    is_main: bool  # this process prints and writes the answers


def model_source(args: argparse.Namespace) -> ModelSource:
    from mm_core.nn.pretrained import is_mm_dir

    model_dir = resolve_model(args.model)
    mm = is_mm_dir(model_dir)
    if mm and not args.processor:
        raise ConfigError(f"--model {model_dir} is an mm checkpoint: add --processor <the original HF directory>")
    return ModelSource(model_dir, Path(args.processor) if args.processor else model_dir, mm)


def model_config(src: ModelSource) -> tuple[dict[str, Any], ModelSpec]:
    """The HF config dict and the registered family that accepts it."""
    from mm_core.nn.pretrained import resolve_hf_config
    from mm_core.plugins import get_plugin_manager

    config, file = resolve_hf_config(src.model_dir, src.proc_dir if src.mm else None)
    return config, get_plugin_manager().model_for_hf_config(config, source=str(file or src.model_dir))


def world_size() -> int:
    """Processes launched together (torchrun sets WORLD_SIZE; 1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_mm_split(src: ModelSource, tp: int, converter: str | None, iteration: str | None = None) -> None:
    """An mm checkpoint holds one file per tp rank: it loads at the tp it was split for only."""
    if not src.mm:
        return
    from mm_core.checkpoint.api import read_mm_layout

    layout = read_mm_layout(src.model_dir, iteration)
    saved_tp, saved_pp = layout.tp_size or 1, (layout.pp_size or 1) * (layout.vpp_size or 1)
    if saved_pp > 1:
        raise ConfigError(f"--model {src.model_dir}: an mm checkpoint split into {saved_pp} pipeline stages; "
                          f"inference runs one stage: re-split it with mm-convert {converter} resplit --cfg.mm_dir "
                          f"{src.model_dir} --cfg.save_dir <new mm dir> --cfg.parallel_config.tp_size {saved_tp}")
    if saved_tp != tp:
        raise ConfigError(f"--model {src.model_dir}: an mm checkpoint split for tp {saved_tp}, asked to run at tp "
                          f"{tp}: run it with --nproc-per-node {saved_tp}, or re-split it with mm-convert "
                          f"{converter} resplit --cfg.mm_dir {src.model_dir} --cfg.save_dir <new mm dir> "
                          f"--cfg.parallel_config.tp_size {tp}")


def check_model(args: argparse.Namespace, world: int) -> None:
    """Everything about the model that can be refused before a worker starts: the directories,
    the family, ``--tp`` against the process count and against the model's heads."""
    from mm_core.inference.tensor_parallel import check_tp

    tp = args.tp or world
    if getattr(args, "lora", None) and tp > 1:
        raise ConfigError("--lora: adapters are applied in one process; for tensor-parallel inference merge them "
                          "first (mm-run lora merge --base ... --adapters ... --out ...) and pass the merged --model")
    if tp != world:
        raise ConfigError(f"--tp {tp}: must equal the number of processes ({world}): each process holds one "
                          "tensor-parallel shard of the model; set --nproc-per-node to the tp size")
    if args.iteration is not None and tp > 1:
        raise ConfigError("--iteration: tensor-parallel inference loads the mm checkpoint's latest iteration; "
                          "drop --iteration or run with one process")
    src = model_source(args)
    config, spec = model_config(src)
    check_tp(spec, config, tp)
    check_mm_split(src, tp, spec.converter, args.iteration)


def load_model(args: argparse.Namespace) -> Loaded:
    """The whole model (one process) or this rank's tensor-parallel shard (launched workers)."""
    import torch

    src = model_source(args)
    dtype = getattr(torch, DTYPES[args.dtype])
    world = world_size()
    t0 = time.perf_counter()
    if world == 1 and (args.tp or 1) == 1:
        from mm_core.nn.pretrained import load_pretrained

        if src.mm:
            check_mm_split(src, 1, model_config(src)[1].converter, args.iteration)
        model = load_pretrained(src.model_dir, hf_config=src.proc_dir if src.mm else None, device=args.device,
                                dtype=dtype, iteration=args.iteration).eval()
        print(f"loaded {src.model_dir} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        return Loaded(model, torch.device(args.device), None, True)
    from mm_core.inference.tensor_parallel import load_tp_model

    check_model(args, world)
    config, spec = model_config(src)
    tpm = load_tp_model(spec, config, src.model_dir, mm=src.mm, device=args.device, dtype=dtype)
    if tpm.rank == 0:
        print(f"loaded {src.model_dir} in {time.perf_counter() - t0:.1f}s ({tpm.summary()})", file=sys.stderr)
    return Loaded(tpm.model, tpm.device, tpm.group, tpm.rank == 0)
