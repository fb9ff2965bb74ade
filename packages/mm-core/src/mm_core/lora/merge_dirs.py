"""``mm-run lora merge``: adapters folded into a base checkpoint, written in the base's own layout.

- HF base: each section's ``scaling * B_s A_s`` is added to the HF tensor (or the rows of a fused
  HF tensor) that the family converter's rule names for it; every safetensors file that holds
  one is rewritten (same file names, index and metadata), the other files are copied.
- mm base (``mm-convert`` layout, tp/pp rank files): the update is cut like its weight (the rule's
  tp split) and added to each rank file's tensor under its stage-local name.

The output is written next to its final place and renamed into it at the end; an existing
output is never touched.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mm_core.errors import ConfigError
from mm_core.lora.files import read_adapters
from mm_core.lora.fingerprint import weights_fingerprint
from mm_core.lora.merge import adapter_modules, delta
from mm_core.lora.sections import RuleSections

Updates = dict[str, list[tuple[int, torch.Tensor]]]  # tensor name -> (first row, rows to add)


def is_mm_dir(d: Path) -> bool:
    from mm_core.checkpoint.mm_dir import LATEST

    return (d / LATEST).is_file() or (d / "mm_layout.json").is_file() or d.name == "release" or \
        d.name.startswith("iter_")


def _spec_and_config(base: Path, meta: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    from mm_core.family.hf_config import load_hf_config
    from mm_core.plugins import get_plugin_manager

    hf_config = load_hf_config(base, hint="merge needs the base's config.json")
    pm = get_plugin_manager()
    spec = pm.model(meta["model"]) if meta.get("model") else pm.model_for_hf_config(hf_config)
    if spec.converter is None:
        raise ConfigError(f"model '{spec.name}' registers no converter: its weights cannot be named for a merge")
    return spec, hf_config


def _add_to_file(path: Path, updates: Updates) -> list[str]:
    """Rewrite one safetensors file with the updates of the tensors it holds."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    done = []
    for key, parts in updates.items():
        if key not in tensors:
            continue
        w = tensors[key].float()
        for start, rows in parts:
            w[start:start + rows.shape[0]] += rows
        tensors[key] = w.to(tensors[key].dtype)
        done.append(key)
    if done:
        save_file(tensors, str(path), metadata=metadata)
    return done


def _hf_updates(modules: Mapping[str, Any], sections: RuleSections, scaling: float) -> Updates:
    out: Updates = {}
    for module, (a_list, b_list) in modules.items():
        shape = (sum(b.shape[0] for b in b_list), a_list[0].shape[1])
        sec = sections.of(f"{module}.weight", shape)
        if not sec.hf_keys:
            raise ConfigError(f"{module}: the converter has no rule for its weight; it cannot be merged")
        start = 0
        for s, (a, b) in enumerate(zip(a_list, b_list)):
            rows = scaling * (b.float() @ a.float())
            key = sec.hf_keys[0] if sec.fused_hf else sec.hf_keys[s]
            out.setdefault(key, []).append((start if sec.fused_hf else 0, rows))
            start += rows.shape[0]
    return out


def _merge_hf(d: Path, modules: Mapping[str, Any], sections: RuleSections, scaling: float, table: Any) -> int:
    updates = _hf_updates(modules, sections, scaling)
    aliased: Updates = {}
    from mm_core.checkpoint.safetensors_io import read_header

    files = sorted(d.glob("*.safetensors"))
    present = {k for f in files for k in read_header(f)[0]}
    for key, parts in updates.items():
        name = key
        if name not in present:  # another spelling of the same checkpoint (hf_aliases)
            name = next((other + key[len(canon):] for other, canon in table.hf_aliases
                         if key.startswith(canon) and other + key[len(canon):] in present), key)
        if name not in present:
            raise ConfigError(f"{d}: no tensor '{key}' to merge the adapter into")
        aliased[name] = parts
    done = [k for f in files for k in _add_to_file(f, aliased)]
    return len(done)


def _merge_mm(d: Path, modules: Mapping[str, Any], sections: RuleSections, scaling: float, table: Any,
              hf_config: dict[str, Any]) -> int:
    from mm_core.checkpoint.mm_dir import chunk_file_name, rank_dirs, read_layout, resolve_iteration_dir

    it_dir = resolve_iteration_dir(d)
    layout = read_layout(d)
    placement = table.placement(hf_config, layout.tp_size, {"vit": layout.vit_pp_layers, "llm": layout.llm_pp_layers})
    items = table.plan(hf_config, placement).by_mm_key()
    ranks = rank_dirs(it_dir)
    nested = layout.vpp_size > 1
    per_file: dict[Path, Updates] = {}
    for module, (a_list, b_list) in modules.items():
        key = f"{module}.weight"
        if key not in items:
            raise ConfigError(f"{module}: the converter has no rule for its weight; it cannot be merged")
        item = items[key]
        shape = (sum(b.shape[0] for b in b_list), a_list[0].shape[1])
        full = delta(a_list, b_list, sections.of(key, shape), scaling)
        pp_rank, chunk = item.stage % layout.pp_size, item.stage // layout.pp_size
        for tp_rank, piece in enumerate(item.tp.split(full, layout.tp_size)):
            if (tp_rank, pp_rank) not in ranks:
                raise ConfigError(f"{it_dir}: no rank directory for tp {tp_rank}, pp {pp_rank}")
            path = ranks[(tp_rank, pp_rank)] / chunk_file_name(chunk, nested)
            if not path.is_file():
                raise ConfigError(f"{path}: missing; merging needs our safetensors rank files (convert a MindSpeed-MM "
                                  "directory with mm-convert first)")
            per_file.setdefault(path, {}).setdefault(item.local_key, []).append((0, piece))
    return sum(len(_add_to_file(p, u)) for p, u in sorted(per_file.items()))


def merge_checkpoint(base: str | Path, adapters: str | Path, out: str | Path, *, check_base: bool = True
                     ) -> dict[str, Any]:
    """Merge the adapters directory into a copy of ``base`` at ``out``; returns a summary."""
    base, out = Path(base), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: exists; choose a new directory (a merge never overwrites)")
    if not base.is_dir():
        raise ConfigError(f"--base {base}: not a directory")
    tensors, meta = read_adapters(adapters)
    kind = "mm" if is_mm_dir(base) else "hf"
    fingerprint = weights_fingerprint(base, mm=kind == "mm")
    if check_base and fingerprint != meta.get("base_fingerprint"):
        raise ConfigError(f"--base {base}: its fingerprint is {fingerprint}, but the adapters in {adapters} were "
                          f"trained on base {meta.get('base_fingerprint')} ({meta.get('base')}); merge them into that "
                          "base (or pass --no-check-base if you know better)")
    spec, hf_config = _spec_and_config(base, meta)
    from mm_core.checkpoint.api import get_converter

    table = get_converter(spec.converter)
    sections = RuleSections(table, hf_config)
    modules = adapter_modules(tensors)
    tmp = out.parent / f".{out.name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(base, tmp)
    try:
        if kind == "hf":
            n = _merge_hf(tmp, modules, sections, float(meta["scaling"]), table)
        else:
            n = _merge_mm(tmp, modules, sections, float(meta["scaling"]), table, hf_config)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()  # empty (checked above)
    os.replace(tmp, out)
    return {"out": str(out), "layout": kind, "modules": len(modules), "tensors_updated": n}
