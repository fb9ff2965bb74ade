"""A fingerprint of the base weights an adapter was trained on.

Choice: sha256 over the sorted records ``(tensor name, dtype, shape, sha256 of its bytes)`` of
every tensor in the base's safetensors files (an HF directory, or every rank file of an mm
directory's iteration, names prefixed by the rank directory). It reads each weight once, but
needs no model and no process group, and it does not depend on how tensors are spread over
files (an HF checkpoint re-sharded by ``save_pretrained`` keeps its fingerprint); any changed
value, name, dtype or shape changes it. The same weights as an HF and as an mm directory have
different fingerprints (the names differ): an adapter is tied to the layout it was trained from.
A randomly initialised base (tests) is fingerprinted by its seed, model name and config.
Other rank files (MindSpeed-MM ``.pt``) are hashed byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def weights_fingerprint(directory: str | Path, *, mm: bool = False) -> str:
    """``sha256:<hex>`` of the weights in an HF directory or an mm directory (latest iteration)."""
    root = Path(directory)
    if mm:
        from mm_core.checkpoint.mm_dir import resolve_iteration_dir

        root = resolve_iteration_dir(root)
        files = sorted(p for p in root.rglob("*") if p.suffix in (".safetensors", ".pt") and p.is_file())
    else:
        files = sorted(root.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{root}: no weight files (*.safetensors) to fingerprint")
    records = []
    for f in files:
        prefix = f"{f.parent.relative_to(root).as_posix()}/" if mm and f.parent != root else ""
        records += _tensor_records(f, prefix) if f.suffix == ".safetensors" else [_file_record(f, prefix)]
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
