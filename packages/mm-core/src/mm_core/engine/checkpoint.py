"""Training checkpoints with torch.distributed.checkpoint (DCP), reshardable to any layout.

Layout: ``<save>/iter_%07d/`` (DCP files) and ``<save>/latest_checkpointed_iteration.txt``, which
is replaced (atomically) only after every rank finished writing, so a crash mid-save leaves the
previous checkpoint as the latest. Keys (DCP flattens nested dicts with dots):

- ``model.<name>``: weights under the WHOLE model's mm names (global layer numbers, full shapes);
- ``optim.state.<name>.<exp_avg|exp_avg_sq|step>`` and ``optim.param_groups.<name>.<lr|...>``;
- ``train.step``, ``train.consumed_samples``; ``data.dp<r>`` (loader position per data rank);
  ``rng.rank<r>`` (torch/cuda RNG states per rank); the data position is stored as JSON text.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from mm_core.engine import lora_checkpoint
from mm_core.engine.model_setup import TIED_ALIASES, EngineStage
from mm_core.engine.row_order import copy_blocked_, to_blocked, to_canonical

TRACKER = "latest_checkpointed_iteration.txt"
_OPT_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)
_PREFIX = "model."


def iter_dir(save: str | Path, step: int) -> Path:
    return Path(save) / f"iter_{step:07d}"


def _canonical(stage: EngineStage, local: str, v: Any) -> Any:
    """Checkpoint order for a tp-blocked gated tensor (a copy); anything else as is."""
    blocks = stage.gated.get(local)
    if blocks and isinstance(v, torch.Tensor) and v.dim() >= 1:
        return to_canonical(v, blocks)
    return v


def _model_state(stage: EngineStage) -> dict[str, Any]:
    sd = get_model_state_dict(stage)
    out = {}
    for k, v in sd.items():
        local = k[len(_PREFIX):]
        out[stage.names.to_global(local)] = _canonical(stage, local, v)
    return out


def _optim_state(stage: EngineStage, opt: torch.optim.Optimizer) -> dict[str, Any]:
    out = {}
    for k, v in get_optimizer_state_dict(stage, opt, options=_OPT_OPTIONS).items():
        section, rest = k.split(".", 1)
        fqn, leaf = rest.rsplit(".", 1)
        local = fqn[len(_PREFIX):]
        out[f"{section}.{stage.names.to_global(local)}.{leaf}"] = _canonical(stage, local, v)
    return out


def _optim_local(stage: EngineStage, flat: dict[str, Any], own: set[str]) -> dict[str, Any]:
    out = {}
    for k, v in flat.items():
        section, rest = k.split(".", 1)
        name, leaf = rest.rsplit(".", 1)
        local = stage.names.to_local(name)
        if local is not None and name in own:
            blocks = stage.gated.get(local)
            if blocks and isinstance(v, torch.Tensor) and v.dim() >= 1:
                v = to_blocked(v, blocks)
            out[f"{section}.{_PREFIX}{local}.{leaf}"] = v
    return out


def _rng_state() -> bytes:
    buf = io.BytesIO()
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(state, buf)
    return buf.getvalue()


def _set_rng_state(blob: bytes) -> None:
    state = torch.load(io.BytesIO(blob), weights_only=True)
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _full_state(stages: list[EngineStage], optimizers: list[torch.optim.Optimizer | None],
                weights_only: bool) -> dict[str, Any]:
    model: dict[str, Any] = {}
    optim: dict[str, Any] = {}
    for stage, opt in zip(stages, optimizers):
        model.update(lora_checkpoint.only_adapters(stage, _model_state(stage)))  # LoRA: adapters only
        if opt is not None and not weights_only:
            optim.update(_optim_state(stage, opt))
    state: dict[str, Any] = {"model": model}
    if optim:
        state["optim"] = optim
    return state


def save_checkpoint(save: str | Path, step: int, stages: list[EngineStage],
                    optimizers: list[torch.optim.Optimizer | None], train_state: dict[str, Any],
                    data_state: dict[str, Any], dp_rank: int, *, weights_only: bool = False,
                    keep_last: int | None = None, config_yaml: str | None = None) -> Path:
    """Write one checkpoint collectively; mark it latest only once every rank is done."""
    path = iter_dir(save, step)
    state = _full_state(stages, optimizers, weights_only)
    if not weights_only:
        state["train"] = dict(train_state)
        state["data"] = {f"dp{dp_rank}": json.dumps(data_state)}
        state["rng"] = {f"rank{dist.get_rank()}": _rng_state()}
    dcp.save(state, checkpoint_id=str(path))
    dist.barrier()
    if dist.get_rank() == 0:
        if config_yaml is not None:
            (path / "finetune_config.yaml").write_text(config_yaml)
        lora_checkpoint.save_adapters(path, stages)
        tmp = Path(save) / f".{TRACKER}.tmp"
        tmp.write_text(str(step))
        os.replace(tmp, Path(save) / TRACKER)
        if keep_last:
            _prune(Path(save), keep_last)
    dist.barrier()
    return path


def _prune(save: Path, keep_last: int) -> None:
    iters = sorted(int(m.group(1)) for p in save.iterdir() if (m := re.fullmatch(r"iter_(\d{7})", p.name)))
    for it in iters[:-keep_last]:
        shutil.rmtree(save / f"iter_{it:07d}", ignore_errors=True)


def _alias_tied(state: dict[str, Any], meta_keys: set[str]) -> dict[tuple[str, str, str], Any]:
    """A tied model's LM head copy (pipeline last stage) that the checkpoint lacks (saved without
    pipeline, or by ``mm-convert``) loads from the word embedding's entries instead."""
    aliased = {}
    for section in ("model", "optim"):
        entries = state.get(section, {})
        for key in list(entries):
            if f"{section}.{key}" in meta_keys:
                continue
            for head, emb in TIED_ALIASES.items():
                alias = key.replace(head, emb)
                if alias != key and f"{section}.{alias}" in meta_keys:
                    value = entries.pop(key)
                    aliased[(section, key, alias)] = value
                    entries.setdefault(alias, value)
    return aliased


def _foreign_sources(path: str | Path, model: torch.nn.Module) -> tuple[str, dict[str, Any]] | None:
    """(model name, where each weight lies) when a family knows the checkpoint's names (``ModelSpec.checkpoint_sources``)."""
    from mm_core.engine.foreign_checkpoint import find_sources, stored_tensors

    return find_sources(model, {k: v.size for k, v in stored_tensors(path).items()})


def latest_iteration(load: str | Path) -> int | str | None:
    """The tracker's iteration, ``"release"`` (weights written by ``mm-convert ... hf_to_dcp``) or None."""
    tracker = Path(load) / TRACKER
    if not tracker.is_file():
        if (Path(load) / ".metadata").is_file():
            raise FileNotFoundError(f"output.load: '{load}' is a checkpoint itself; give the directory above it "
                                    f"('{Path(load).parent}', which holds {TRACKER}), or that directory with "
                                    f"output.load_iteration")
        return None
    text = tracker.read_text().strip()
    return "release" if text == "release" else int(text)


def load_checkpoint(path: str | Path, stages: list[EngineStage], optimizers: list[torch.optim.Optimizer | None],
                    dp_rank: int, *, load_optim: bool = True) -> dict[str, Any]:
    """Load weights (and optimizer, train, data and RNG state when present) into this layout.

    Returns ``{"train": ..., "data": ...}`` (empty dicts for a weights-only checkpoint). ``data``
    is this data rank's saved position (rank 0's if the checkpoint has fewer data ranks) plus
    ``dp_states``: every saved data rank's, in rank order, from which a map-style loader resumes
    on another data-parallel size.
    """
    lora = lora_checkpoint.check_base(path, stages)  # adapters only; refuses another base
    meta_keys = set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
    has_optim = any(k.startswith("optim.") for k in meta_keys)
    state = _full_state(stages, optimizers, weights_only=not (load_optim and has_optim))
    aliased = _alias_tied(state, meta_keys)
    missing = [k for k in state["model"] if f"model.{k}" not in meta_keys]
    foreign = _foreign_sources(path, stages[0].model) if missing and len(missing) == len(state["model"]) else None
    if missing and foreign is None:
        raise FileNotFoundError(f"checkpoint {path} lacks weights {missing[:5]} (of {len(missing)}); "
                                "it was saved from another model")
    if foreign is not None:  # another system's names (e.g. hf_to_dcp's): translated, read shard by shard
        from mm_core.engine.foreign_checkpoint import load_foreign

        load_foreign(path, state["model"], foreign[1], f"the layout model '{foreign[0]}' reads")
    model_state = state.pop("model") if foreign is not None else None
    if "train.step" in meta_keys:
        state["train"] = {k.split(".", 1)[1]: 0 for k in meta_keys if k.startswith("train.")}
    data_key = f"dp{dp_rank}" if f"data.dp{dp_rank}" in meta_keys else "dp0"
    data_keys = sorted((k.split(".", 1)[1] for k in meta_keys if re.fullmatch(r"data\.dp\d+", k)),
                       key=lambda k: int(k[2:]))
    if data_keys:
        state["data"] = {k: "" for k in data_keys}
    rng_key = f"rank{dist.get_rank()}"
    if f"rng.{rng_key}" in meta_keys:
        state["rng"] = {rng_key: b""}
    if any(state.values()):
        dcp.load(state, checkpoint_id=str(path))
    if model_state is not None:
        state["model"] = model_state
    for (section, key, alias), value in aliased.items():
        src = state[section][alias]
        if isinstance(value, torch.Tensor) and value is not src:
            with torch.no_grad():
                (value.to_local() if hasattr(value, "to_local") else value).copy_(
                    src.to_local() if hasattr(src, "to_local") else src)
            state[section][key] = value
        else:
            state[section][key] = src
    for stage, opt in zip(stages, optimizers):
        own = {stage.names.to_global(k[len(_PREFIX):]) for k in stage.state_dict()}
        local = {}
        for k, v in state["model"].items():
            name = stage.names.to_local(k)
            if name is None or k not in own:  # another stage's (possibly on this rank, virtual chunks)
                continue
            if name in stage.gated:  # loaded in checkpoint order into a copy: write it back blocked
                param = stage.get_parameter(_PREFIX + name)
                copy_blocked_(param, v, stage.gated[name])
                v = param
            local[_PREFIX + name] = v
        set_model_state_dict(stage, local, options=StateDictOptions(strict=not lora))
        if opt is not None and "optim" in state:
            set_optimizer_state_dict(stage, opt, _optim_local(stage, state["optim"], own), options=_OPT_OPTIONS)
    if "rng" in state:
        _set_rng_state(state["rng"][rng_key])
    saved = state.get("data", {})
    data = {**json.loads(saved[data_key]), "dp_states": [json.loads(saved[k]) for k in data_keys]} \
        if saved.get(data_key) else {}
    return {"train": state.get("train", {}), "data": data}
