"""VisualGLM-6B's published checkpoint files: SAT's ``.pt`` and the HF remote code's ``.bin`` shards.

- SAT: ``latest`` (the iteration, "1"), ``model_config.json``, ``<iter>/mp_rank_00_model_states.pt``
  holding ``{"module": state_dict}``;
- HF remote code: ``config.json`` and ``pytorch_model-0000i-of-0000n.bin`` + ``pytorch_model.bin.index.json``
  (or one ``pytorch_model.bin``).

Pickles are read with ``torch.load(weights_only=True, mmap=True)`` (tensors only, nothing runs, pages
read on use). Tensors no module uses (``UNUSED``) travel beside the weights so a round trip writes
them back; a layout that lacks them gets them made the way its code makes them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mm_core.checkpoint.errors import ConversionError

SAT_FILE = "mp_rank_00_model_states.pt"
BIN_INDEX = "pytorch_model.bin.index.json"
UNUSED = {  # layout -> patterns of tensors the models never read
    "sat": (r"transformer\.position_embeddings\.weight", r"mixins\.chatglm-attn\.rotary_emb\.inv_freq"),
    "hf": (r"transformer\.layers\.\d+\.attention\.rotary_emb\.inv_freq",),
}


def detect(path: str | Path) -> str:
    """``sat``, ``hf_bin`` or ``safetensors``: which files a VisualGLM directory holds."""
    d = Path(path)
    if (d / "latest").is_file() or (d / "model_config.json").is_file():
        return "sat"
    if (d / BIN_INDEX).is_file() or (d / "pytorch_model.bin").is_file():
        return "hf_bin"
    if any(d.glob("*.safetensors")):
        return "safetensors"
    raise ConversionError(f"{d} holds neither a SAT checkpoint (latest + <iter>/{SAT_FILE}), HF .bin shards "
                          f"({BIN_INDEX}) nor *.safetensors")


def _load(file: Path) -> dict[str, Any]:
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - a pickle with code objects, a truncated file, ...
        raise ConversionError(f"{file}: cannot be read as a tensors-only checkpoint (torch.load weights_only=True): "
                              f"{e}") from e


def sat_weights_file(d: Path) -> Path:
    latest = d / "latest"
    it = latest.read_text().strip() if latest.is_file() else "1"
    f = d / it / SAT_FILE
    if not f.is_file():
        raise ConversionError(f"{d}: 'latest' says iteration {it} but {f} does not exist")
    return f


def read_sat(d: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """SAT state dict (the ``module`` entry) and ``model_config.json``."""
    d = Path(d)
    f = sat_weights_file(d)
    obj = _load(f)
    if not isinstance(obj, Mapping) or not isinstance(obj.get("module"), Mapping):
        raise ConversionError(f"{f}: no 'module' state dict (keys: {sorted(obj)[:6] if isinstance(obj, Mapping) else type(obj)})")
    cfg_file = d / "model_config.json"
    if not cfg_file.is_file():
        raise ConversionError(f"{d}: no model_config.json next to the SAT weights")
    return dict(obj["module"]), json.loads(cfg_file.read_text())


def read_hf_bin(d: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The shards' tensors (every shard the index names) and ``config.json``."""
    d = Path(d)
    index = d / BIN_INDEX
    if index.is_file():
        files = sorted({d / f for f in json.loads(index.read_text())["weight_map"].values()})
    else:
        files = [d / "pytorch_model.bin"]
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise ConversionError(f"{index} names {f.name}, which does not exist")
        for k, v in _load(f).items():
            if k in state:
                raise ConversionError(f"{d}: tensor {k} is stored twice ({f.name})")
            state[k] = v
    return state, json.loads((d / "config.json").read_text())


def split_unused(state: Mapping[str, torch.Tensor], layout: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(weights, unused)``: the tensors the rule table converts and those no module reads."""
    pats = [re.compile(p) for p in UNUSED[layout]]
    unused = {k: v for k, v in state.items() if any(p.fullmatch(k) for p in pats)}
    return {k: v for k, v in state.items() if k not in unused}, unused


def make_unused(config: Mapping[str, Any], layout: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """What a layout's code holds besides the weights, made as that code makes it: HF's per-layer fp16
    rotary ``inv_freq``; SAT's (unused) position table as zeros and its fp32 ``inv_freq``."""
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    dim = hidden // heads // 2
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    if layout == "hf":
        return {f"transformer.layers.{i}.attention.rotary_emb.inv_freq": inv_freq.half()
                for i in range(int(config["num_layers"]))}
    return {"transformer.position_embeddings.weight": torch.zeros(int(config.get("max_sequence_length", 2048)),
                                                                   hidden, dtype=dtype),
            "mixins.chatglm-attn.rotary_emb.inv_freq": inv_freq.to(dtype)}


def write_sat(d: Path, state: Mapping[str, torch.Tensor], model_config: Mapping[str, Any], iteration: str = "1") -> None:
    (d / iteration).mkdir(parents=True, exist_ok=True)
    torch.save({"module": dict(state)}, d / iteration / SAT_FILE)
    (d / "latest").write_text(iteration)
    (d / "model_config.json").write_text(json.dumps(dict(model_config), indent=2) + "\n")


def write_hf_bin(d: Path, state: Mapping[str, torch.Tensor], max_shard_bytes: int = 5 * 1024**3) -> None:
    """``pytorch_model-0000i-of-0000n.bin`` shards (a tensor is never cut) and their index."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        n = v.numel() * v.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += n
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin"
        torch.save({k: v.contiguous() for k, v in shard.items()}, d / name)
        weight_map.update({k: name for k in shard})
    total = sum(v.numel() * v.element_size() for v in state.values())
    (d / BIN_INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def hf_config_of_sat(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The HF remote-code ``config.json`` that matches a SAT ``model_config.json``."""
    cfg = {k: v for k, v in model_config.items() if k not in ("eva_args", "qformer_args", "model_class",
                                                              "tokenizer_type", "layernorm_order")}
    cfg.update(model_type="chatglm", architectures=["ChatGLMForConditionalGenerationWithImage"],
               eva_config=dict(model_config["eva_args"]), qformer_config=dict(model_config["qformer_args"]))
    return cfg


def sat_config_of_hf(config: Mapping[str, Any]) -> dict[str, Any]:
    """The SAT ``model_config.json`` that matches an HF remote-code ``config.json``."""
    cfg = {k: v for k, v in config.items() if k not in ("eva_config", "qformer_config", "model_type",
                                                         "architectures", "auto_map")}
    cfg.update(model_class="VisualGLMModel", tokenizer_type="THUDM/chatglm-6b", layernorm_order="post",
               eva_args=dict(config["eva_config"]), qformer_args=dict(config["qformer_config"]))
    return cfg
