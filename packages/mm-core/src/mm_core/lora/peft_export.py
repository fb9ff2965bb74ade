"""``mm-run lora export-peft``: adapters in PEFT's layout, for the family's transformers class.

PEFT keeps one ``lora_A``/``lora_B`` pair per HF Linear, under the transformers module path:
``base_model.model.<module>.lora_A.weight`` ``[r, in]`` and ``.lora_B.weight`` ``[out, r]``, with
``adapter_config.json`` holding ``r``, ``lora_alpha`` and the target modules. Our sections map
onto that through the converter's rules: a section with its own HF tensor (q/k/v, gate/up) is
its own PEFT module with the same A and B; sections sharing one fused HF tensor (Qwen's vision
``attn.qkv``) become one PEFT module of rank ``sections x r`` (A stacked, B block-diagonal) with
``alpha`` scaled alike in ``rank_pattern``/``alpha_pattern``, so ``alpha / r`` and the update are
exactly ours. The HF names are the transformers model's own spelling (checked on the meta device).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mm_core.errors import ConfigError
from mm_core.lora.files import read_adapters
from mm_core.lora.merge import adapter_modules
from mm_core.lora.merge_dirs import _spec_and_config
from mm_core.lora.sections import RuleSections

PREFIX = "base_model.model."


def hf_module_names(base: Path) -> set[str]:
    """Module paths of the base's transformers class (built on the meta device from config.json)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(base), trust_remote_code=False)
    archs = getattr(config, "architectures", None) or []
    cls = next((getattr(transformers, a) for a in archs if hasattr(transformers, a)), None)
    if cls is None:
        raise ConfigError(f"--base {base}: config.json names no transformers class ({archs}); PEFT export needs "
                          "a family with a transformers model")
    with torch.device("meta"):
        model = cls(config)
    return {n for n, _ in model.named_modules()}


def _module_of(key: str, aliases: tuple[tuple[str, str], ...], modules: set[str]) -> str:
    """The transformers module holding HF weight ``key`` (the rule's spelling or an alias of it)."""
    path = key.removesuffix(".weight")
    candidates = [path] + [other + path[len(canon):] for other, canon in aliases if path.startswith(canon)]
    for c in candidates:
        if c in modules:
            return c
    raise ConfigError(f"no transformers module for weight '{key}' (tried {candidates})")


def peft_tensors(adapters: Mapping[str, torch.Tensor], sections: RuleSections, aliases: tuple[tuple[str, str], ...],
                 modules: set[str], rank: int, alpha: float) -> tuple[dict[str, torch.Tensor], dict[str, int],
                                                                      dict[str, float]]:
    """``(tensors, rank_pattern, alpha_pattern)`` in PEFT's names."""
    out: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for module, (a_list, b_list) in sorted(adapter_modules(adapters).items()):
        shape = (sum(b.shape[0] for b in b_list), a_list[0].shape[1])
        sec = sections.of(f"{module}.weight", shape)
        if not sec.hf_keys:
            raise ConfigError(f"{module}: the converter has no rule for its weight; no HF name to export it under")
        if sec.fused_hf:
            pairs = [(sec.hf_keys[0], torch.cat(a_list), torch.block_diag(*b_list))]
        else:
            pairs = list(zip(sec.hf_keys, a_list, b_list))
        for key, a, b in pairs:
            name = _module_of(key, aliases, modules)
            if f"{PREFIX}{name}.lora_A.weight" in out:
                raise ConfigError(f"{name}: two adapters map onto this HF module")
            out[f"{PREFIX}{name}.lora_A.weight"] = a.contiguous()
            out[f"{PREFIX}{name}.lora_B.weight"] = b.contiguous()
            if a.shape[0] != rank:
                ranks[re.escape(name)] = int(a.shape[0])
                alphas[re.escape(name)] = alpha * a.shape[0] / rank
    return out, ranks, alphas


def export_peft(adapters: str | Path, base: str | Path, out: str | Path) -> dict[str, Any]:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` into the new directory ``out``."""
    from safetensors.torch import save_file

    base, out = Path(base), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: exists; choose a new directory (an export never overwrites)")
    tensors, meta = read_adapters(adapters)
    spec, hf_config = _spec_and_config(base, meta)
    from mm_core.checkpoint.api import get_converter

    table = get_converter(spec.converter)
    lora = meta["lora"]
    peft, ranks, alphas = peft_tensors(tensors, RuleSections(table, hf_config), tuple(table.hf_aliases),
                                       hf_module_names(base), int(lora["rank"]), float(lora["alpha"]))
    targets = sorted({k[len(PREFIX):].rsplit(".lora_", 1)[0] for k in peft})
    config = {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": str(base), "inference_mode": True,
              "r": int(lora["rank"]), "lora_alpha": float(lora["alpha"]), "lora_dropout": float(lora["dropout"]),
              "target_modules": targets, "rank_pattern": ranks, "alpha_pattern": alphas, "bias": "none",
              "fan_in_fan_out": False, "use_rslora": False, "init_lora_weights": True, "modules_to_save": None}
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(peft, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return {"out": str(out), "modules": len(targets), "tensors": len(peft)}
