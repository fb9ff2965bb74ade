"""``mm-run infer --lora DIR``: answer with LoRA adapters on top of the base, without merging.

The adapters directory (``<save>/iter_N/lora`` or one written by ``mm-run lora``) records the base
it was trained on; the loaded model must be that base (same weights fingerprint), unless the user
says otherwise (``--no-check-base``), so an adapter is never silently applied to another model.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mm_core.errors import ConfigError


def attach_adapters(model: Any, adapters: str | Path, model_dir: Path, *, mm: bool, check_base: bool = True) -> None:
    """Put the adapters of ``adapters`` on ``model`` (loaded from ``model_dir``) in place."""
    from mm_core.family.hf_config import load_hf_config
    from mm_core.lora.apply import apply_lora, set_adapters
    from mm_core.lora.files import lora_config_of, read_adapters
    from mm_core.lora.fingerprint import weights_fingerprint
    from mm_core.plugins import get_plugin_manager

    try:
        tensors, meta = read_adapters(adapters)
    except FileNotFoundError as e:
        raise ConfigError(f"--lora: {e}") from None
    if check_base:
        found = weights_fingerprint(model_dir, mm=mm)
        if found != meta.get("base_fingerprint"):
            raise ConfigError(f"--lora {adapters}: these adapters were trained on base {meta.get('base_fingerprint')} "
                              f"({meta.get('base')}), but --model {model_dir} is {found}; load that base (an HF dir and its mm-convert "
                              "copies agree), or pass --no-check-base if the adapters were saved before the "
                              "fingerprint covered weight values (older releases)")
    spec = get_plugin_manager().model(meta["model"])
    apply_lora(model, lora_config_of(meta), spec, load_hf_config(model_dir))
    try:
        set_adapters(model, {k: v.to(next(model.parameters()).dtype) for k, v in tensors.items()})
    except ValueError as e:
        raise ConfigError(f"--lora {adapters}: {e}") from None
    model.eval()
    print(f"adapters {adapters}: rank {meta['lora']['rank']}, {len(tensors)} tensors", file=sys.stderr)
