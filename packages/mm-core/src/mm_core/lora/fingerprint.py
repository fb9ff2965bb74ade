"""A fingerprint of the base weights an adapter was trained on.

Choice: sha256 over the sorted records ``(mm name, dtype, shape, sha256 of its values)`` of every
weight of the model as the family's converter names it in one piece (tp 1, one stage, global
layer numbers): read from an HF directory through the converter's rules, or gathered from an mm
directory's rank files (any tp/pp layout). So an HF checkpoint and its ``mm-convert`` copy agree
(conversion is exact), and how tensors are spread over files or ranks does not matter; any
changed value, dtype or shape changes it. It reads each weight once, one tensor at a time, and
needs no model and no process group. A randomly initialised base (tests) is fingerprinted by its
seed, model name and config. A directory without a config.json naming a registered model (a
MindSpeed-MM one) can only be fingerprinted by its files: every tensor (names prefixed by the
rank directory; ``.pt`` rank files byte for byte), which only that same directory matches.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mm_core.checkpoint.safetensors_io import read_header

_CHUNK = 1 << 24


def _tensor_records(path: Path, prefix: str = "") -> list[tuple[str, str, list[int], str]]:
    infos, _ = read_header(path)
    out = []
    with open(path, "rb") as f:
        for name, info in infos.items():
            h = hashlib.sha256()
            f.seek(info.start)
            left = info.nbytes
            while left:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    raise OSError(f"{path}: tensor {name} is cut short")
                h.update(chunk)
                left -= len(chunk)
            out.append((prefix + name, str(info.dtype).removeprefix("torch."), list(info.shape), h.hexdigest()))
    return out


def _file_record(path: Path, prefix: str) -> tuple[str, str, list[int], str]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return (prefix + path.name, "file", [], h.hexdigest())


def _file_records(root: Path, mm: bool) -> list[tuple[str, str, list[int], str]]:
    if mm:
        files = sorted(p for p in root.rglob("*") if p.suffix in (".safetensors", ".pt") and p.is_file())
    else:
        files = sorted(root.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{root}: no weight files (*.safetensors) to fingerprint")
    records = []
    for f in files:
        prefix = f"{f.parent.relative_to(root).as_posix()}/" if mm and f.parent != root else ""
        records += _tensor_records(f, prefix) if f.suffix == ".safetensors" else [_file_record(f, prefix)]
    return records


def _converter(directory: Path) -> tuple[Any, dict[str, Any]] | None:
    """The registered converter of the model whose config.json is in ``directory``, if any."""
    from mm_core.checkpoint.api import get_converter
    from mm_core.errors import ConfigError, UnknownKeyError
    from mm_core.family.hf_config import config_file, load_hf_config
    from mm_core.plugins import get_plugin_manager

    if not config_file(directory).is_file():
        return None
    hf_config = load_hf_config(directory)
    try:
        spec = get_plugin_manager().model_for_hf_config(hf_config, source=str(config_file(directory)))
    except (ConfigError, UnknownKeyError):
        return None
    return (get_converter(spec.converter), hf_config) if spec.converter else None


def _mm_source(table: Any, hf_config: dict[str, Any], directory: Path) -> tuple[Any, Any]:
    """The plan of an mm directory in the layout it was saved in, and its rank files as a source."""
    from mm_core.checkpoint.mm_dir import read_layout, resolve_iteration_dir
    from mm_core.checkpoint.sources import MMSource

    layout = read_layout(directory, None, table.layer_prefixes(hf_config))
    layers = {"vit": layout.vit_pp_layers, "llm": layout.llm_pp_layers}
    layers |= {k.removesuffix("_pp_layers"): v for k, v in layout.extra.items() if k.endswith("_pp_layers")}
    placement = table.placement(hf_config, layout.tp_size, {m: v for m, v in layers.items() if m in table.modules})
    plan = table.plan(hf_config, placement, present_hf=None)
    return plan, MMSource(resolve_iteration_dir(directory), plan, layout.tp_size, plan.tied_keys)


def _hf_source(table: Any, hf_config: dict[str, Any], directory: Path) -> tuple[Any, Any]:
    """The one-stage tp-1 plan of an HF directory, and its tensors as a source."""
    from mm_core.checkpoint.hf import HFReader
    from mm_core.checkpoint.rules import check_keys
    from mm_core.checkpoint.sources import HFSource

    reader = HFReader(directory, table.hf_aliases)
    placement = table.placement(hf_config, 1, {m: None for m in table.modules})
    plan = table.plan(hf_config, placement, present_hf=reader.keys())
    check_keys(plan, reader.keys(), str(directory))
    return plan, HFSource(reader)


def _value_records(plan: Any, source: Any) -> list[tuple[str, str, list[int], str]]:
    records = []
    try:
        for item in plan.items:
            if item.tied_copy:  # a copy of the embedding on another stage: not a weight of its own
                continue
            t = source.full(item).contiguous()
            digest = hashlib.sha256(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()
            records.append((item.mm_key, str(t.dtype).removeprefix("torch."), list(t.shape), digest))
    finally:
        source.close()
    return records


def weights_fingerprint(directory: str | Path, *, mm: bool = False) -> str:
    """``sha256:<hex>`` of the weights in an HF directory or an mm directory (latest iteration):
    equal for the same values under the converter's mm names, whatever the layout."""
    root = Path(directory)
    found = _converter(root)
    if found is None:
        from mm_core.checkpoint.mm_dir import resolve_iteration_dir

        records = _file_records(resolve_iteration_dir(root) if mm else root, mm)
    else:
        table, hf_config = found
        records = _value_records(*(_mm_source if mm else _hf_source)(table, hf_config, root))
    records.sort()
    return "sha256:" + hashlib.sha256(json.dumps(records, separators=(",", ":")).encode()).hexdigest()


def base_fingerprint(base: Mapping[str, Any]) -> str:
    """The fingerprint of a base described by ``mm_core.lora.engine.base_source``."""
    kind = base.get("kind")
    if kind == "random_init":
        blob = json.dumps({k: base[k] for k in ("seed", "model", "hf_config")}, sort_keys=True, default=str)
        return "sha256:" + hashlib.sha256(b"random_init:" + blob.encode()).hexdigest()
    if kind in ("hf", "mm"):
        return weights_fingerprint(base["path"], mm=kind == "mm")
    raise ValueError(f"unknown base kind {kind!r}")
