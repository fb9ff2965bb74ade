"""Adapters-only training checkpoints (``mm_core.lora``).

With a ``lora`` section the frozen base is never saved: the DCP checkpoint's ``model`` entries are
the adapters alone (optimizer, data and RNG state as usual, so a run resumes exactly), and rank 0
also writes ``<iter>/lora/`` (``adapter_model.safetensors`` + ``mm_lora.json`` with the base's
fingerprint) for ``mm-run lora merge/export-peft``. Resuming recomputes the fingerprint of this
run's base and refuses a different one.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mm_core.errors import ConfigError
from mm_core.lora.apply import LoraState, is_adapter

LORA_DIR = "lora"
_FINGERPRINTS: dict[str, str] = {}


def lora_state(stages: list[Any]) -> LoraState | None:
    for stage in stages:
        state = getattr(stage.model, "mm_lora", None)
        if state is not None:
            return state
    return None


def only_adapters(stage: Any, model_state: dict[str, Any]) -> dict[str, Any]:
    """A LoRA stage's checkpoint entries: its adapters only (anything else as is)."""
    if getattr(stage.model, "mm_lora", None) is None:
        return model_state
    return {k: v for k, v in model_state.items() if is_adapter(k)}


def fingerprint(state: LoraState) -> str:
    """This run's base fingerprint (computed once per process)."""
    from mm_core.lora.fingerprint import base_fingerprint

    key = json.dumps(state.base, sort_keys=True, default=str)
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = base_fingerprint(state.base)
    return _FINGERPRINTS[key]


def _read_dcp_adapters(path: Path) -> dict[str, torch.Tensor]:
    """The adapter entries of a DCP checkpoint, as whole tensors, on this rank alone."""
    import torch.distributed.checkpoint as dcp

    meta = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    model = {k[len("model."):]: torch.empty(tuple(m.size), dtype=m.properties.dtype)
             for k, m in meta.items() if k.startswith("model.") and hasattr(m, "size")}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore")
        dcp.load({"model": model}, checkpoint_id=str(path), no_dist=True)
    return model


def save_adapters(path: str | Path, stages: list[Any]) -> None:
    """Rank 0, after every rank wrote the DCP checkpoint: ``<path>/lora/``."""
    from mm_core.lora.files import write_adapters

    state = lora_state(stages)
    if state is None:
        return
    tensors = _read_dcp_adapters(Path(path))
    write_adapters(Path(path) / LORA_DIR, tensors, state.config, state.base, fingerprint(state), state.model)


def _shown(base: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in base.items() if k != "hf_config"}


def check_base(path: str | Path, stages: list[Any]) -> bool:
    """Refuse to resume adapters trained on another base (all ranks raise together). Returns
    whether this is a LoRA run (its checkpoint holds the adapters only)."""
    state = lora_state(stages)
    if state is None:
        return False
    meta_file = Path(path) / LORA_DIR / "mm_lora.json"
    if not meta_file.is_file():
        raise ConfigError(f"output.load: {path} has no {LORA_DIR}/mm_lora.json; it is not a LoRA checkpoint, and this "
                          "run has a lora section")
    saved = json.loads(meta_file.read_text())
    mine = [fingerprint(state) if not dist.is_initialized() or dist.get_rank() == 0 else None]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(mine, src=0)
    if saved.get("base_fingerprint") != mine[0]:
        raise ConfigError(f"output.load: the adapters in {path} were trained on base {saved.get('base_fingerprint')} "
                          f"({saved.get('base')}), but this run's base is {mine[0]} ({_shown(state.base)}); load them "
                          "onto the base they were trained on (model.hf_dir / model.mm_dir)")
    return True
