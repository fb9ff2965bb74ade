"""HF directories: read tensors one at a time, write shards with a fresh index, copy the rest.

Keys are handled in their *canonical* (old, Hub) style, ``visual.*`` / ``model.*`` /
``lm_head.*``; a converter's ``hf_aliases`` maps other spellings (transformers' in-memory
``model.visual.*`` / ``model.language_model.*``) onto it when reading, and back when writing a
directory in the style the source used.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mm_core.checkpoint.errors import ConversionError
from mm_core.checkpoint.rowcopy import FdCache
from mm_core.checkpoint.safetensors_io import StreamingWriter, TensorInfo, nbytes_of, read_header
from mm_core.family import hf_config as family_hf_config

INDEX = "model.safetensors.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".partial")
SKIP_FILES = {INDEX, "pytorch_model.bin.index.json", "latest_checkpointed_iteration.txt", "mm_layout.json",
              "mm_dcp.json"}


def load_hf_config(hf_dir: str | Path) -> dict[str, Any]:
    """An HF directory's config.json (read by ``mm_core.family.hf_config``, with mm-convert's flag as the fix)."""
    return family_hf_config.load_hf_config(hf_dir, hint="point --cfg.hf_config.hf_dir at an HF model directory")


def to_canonical(key: str, aliases: Sequence[tuple[str, str]]) -> tuple[str, bool]:
    """``(canonical key, whether an alias applied)``; aliases are ``(other prefix, canonical prefix)``."""
    for other, canon in aliases:
        if key.startswith(other):
            return canon + key[len(other):], True
    return key, False


def from_canonical(key: str, aliases: Sequence[tuple[str, str]]) -> str:
    for other, canon in aliases:
        if key.startswith(canon):
            return other + key[len(canon):]
    return key


class HFReader:
    """The tensors of an HF directory (sharded with an index, or single files), by canonical key."""

    def __init__(self, hf_dir: str | Path, aliases: Sequence[tuple[str, str]] = ()):
        self.dir = Path(hf_dir)
        if not self.dir.is_dir():
            raise ConversionError(f"HF directory {self.dir} does not exist")
        index = self.dir / INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            files = sorted({self.dir / f for f in weight_map.values()})
            absent = [str(f) for f in files if not f.is_file()]
            if absent:
                raise ConversionError(f"{index} names shard(s) that do not exist: {absent[:3]}")
        else:
            files = sorted(self.dir.glob("*.safetensors"))
        if not files:
            bins = sorted(p.name for p in self.dir.glob("*.bin"))
            hint = (f" (it has {bins[:2]}: save the model with safe_serialization=True to get safetensors)"
                    if bins else "")
            raise ConversionError(f"{self.dir} holds no *.safetensors files{hint}")
        self.infos: dict[str, TensorInfo] = {}
        self.order: list[str] = []
        new_style = False
        for f in files:
            infos, _ = read_header(f)
            for raw, info in infos.items():
                key, aliased = to_canonical(raw, aliases)
                new_style |= aliased
                if key in self.infos:
                    raise ConversionError(f"{self.dir}: tensor {key} is stored twice ({self.infos[key].path.name} "
                                          f"and {f.name})")
                self.infos[key] = info
                self.order.append(key)
        self.key_style = "new" if new_style else "old"

    def keys(self) -> set[str]:
        return set(self.infos)

    def read(self, key: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        from mm_core.checkpoint.safetensors_io import read_tensor

        return read_tensor(self.infos[key], rows)

    def meta(self, key: str) -> torch.Tensor:
        return self.infos[key].meta()


def aux_files(hf_dir: str | Path) -> list[Path]:
    """Everything of an HF dir that is not weights: config, tokenizer, processor, chat template."""
    d = Path(hf_dir)
    return sorted(p for p in d.iterdir() if p.is_file() and p.name not in SKIP_FILES
                  and not p.name.endswith(WEIGHT_SUFFIXES) and not p.name.startswith("."))


def copy_aux_files(hf_dir: str | Path, out_dir: Path) -> list[str]:
    copied = []
    for p in aux_files(hf_dir):
        shutil.copy2(p, out_dir / p.name)
        copied.append(p.name)
    return copied


class HFWriter:
    """Shards of at most ``max_shard_bytes`` (a tensor is never cut), named like transformers',
    with a fresh ``model.safetensors.index.json`` when there is more than one."""

    def __init__(self, out_dir: Path, specs: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
                 max_shard_bytes: int = 5 * 1024**3):
        shards: list[dict[str, tuple[tuple[int, ...], torch.dtype]]] = [{}]
        size = 0
        for key, (shape, dtype) in specs.items():
            n = nbytes_of(shape, dtype)
            if shards[-1] and size + n > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][key] = (shape, dtype)
            size += n
        count = len(shards)
        names = ["model.safetensors"] if count == 1 else [
            f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        self.writers: dict[str, StreamingWriter] = {}
        self.total = 0
        for name, shard in zip(names, shards):
            w = StreamingWriter(out_dir / name, shard, {"format": "pt"})
            self.total += sum(nbytes_of(*v) for v in shard.values())
            for key in shard:
                self.writers[key] = w
        if count > 1:
            index = {"metadata": {"total_size": self.total},
                     "weight_map": {k: w.path.name for k, w in self.writers.items()}}
            (out_dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")

    def write(self, key: str, tensor: torch.Tensor) -> int:
        return self.writers[key].write(key, tensor)

    def write_rows(self, key: str, tensor: torch.Tensor, start: int) -> int:
        return self.writers[key].write_rows(key, tensor, start)

    def copy(self, key: str, segs: list, fds: FdCache) -> int:
        return self.writers[key].copy(key, segs, fds)

    def close(self) -> None:
        for w in {id(w): w for w in self.writers.values()}.values():
            w.close()

    def abort(self) -> None:
        for w in {id(w): w for w in self.writers.values()}.values():
            w.abort()
