"""The converter's verbs for VisualGLM's published files (SAT ``.pt``, HF ``.bin``) and the three-part export.

A safetensors directory (HF remote-code names) goes through mm-convert's engine unchanged; the
pickled layouts are read whole (``formats.py``), checked against the rule table, and streamed into
the same mm writer. ``mm_layout.json`` records the source (``visualglm_source``) and the LM's q/k/v
order found in it, so ``mm_to_hf`` writes the source back bit-exact by default, or the other layout.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mm_convert.config import HfToMmConfig, MmToHfConfig
from mm_convert.output import atomic_dir
from mm_core.checkpoint.errors import ConfigError, ConversionError
from mm_core.checkpoint.hf import copy_aux_files
from mm_core.checkpoint.mm_dir import read_layout
from mm_core.checkpoint.rowcopy import FdCache
from mm_core.checkpoint.rules import Item, check_keys
from mm_core.checkpoint.sources import Source, check_shapes, meta
from mm_visualglm import formats

UNUSED_FILE = "visualglm_unused.safetensors"
TARGETS = ("sat", "hf_bin", "safetensors")
PARTS = {"vit": "image_encoder.encoder.", "qformer": "image_encoder.projector.", "glm": "text_decoder."}


@dataclass
class VisualGLMToMmConfig(HfToMmConfig):
    """hf_to_mm settings for VisualGLM (``hf_config.hf_dir``: a SAT dir, an HF ``.bin`` dir or safetensors).

    Args:
        qkv_order: the LM's fused q/k/v rows in a SAT checkpoint: ``contiguous`` (SAT since July 2023),
            ``interleaved`` (older SAT copies) or ``auto`` (told apart by the logits on a probe input)
        probe_ids: token ids of the probe text for ``auto`` (default: a sentence through the
            directory's ``ice_text.model``)
    """

    qkv_order: str = "auto"
    probe_ids: list[int] | None = None


@dataclass
class VisualGLMFromMmConfig(MmToHfConfig):
    """mm_to_hf settings for VisualGLM.

    Args:
        layout: ``sat``, ``hf_bin`` or ``safetensors``; default: the layout the mm dir was made from
    """

    layout: str | None = None


class DictSource(Source):
    """Tensors already in memory (a loaded pickle), keyed by source name."""

    def __init__(self, state: Mapping[str, torch.Tensor]):
        self.state = state
        self.fds = FdCache()

    def meta(self, item: Item) -> torch.Tensor:
        ts = [self.state[k] for k in item.hf_keys]
        return meta(item.rule.op.forward_shape([tuple(t.shape) for t in ts]), ts[0].dtype)

    def full(self, item: Item) -> torch.Tensor:
        return item.rule.op.forward([self.state[k] for k in item.hf_keys])


def _log(msg: str) -> None:
    print(f"[mm-convert] {msg}", flush=True)


def read_source(src: Path) -> tuple[str, dict[str, torch.Tensor], dict[str, Any], dict[str, Any] | None]:
    """``(layout, state, HF config, SAT model_config or None)`` of a SAT or HF ``.bin`` directory."""
    if formats.detect(src) == "sat":
        state, model_config = formats.read_sat(src)
        return "sat", state, formats.hf_config_of_sat(model_config), model_config
    state, config = formats.read_hf_bin(src)
    return "hf", state, config, None


def pickled_to_mm(cfg: VisualGLMToMmConfig, progress: bool = True) -> None:
    from mm_convert.engine import write_mm
    from mm_visualglm.convert import VisualGLMConverter
    from mm_visualglm.qkv_probe import probe_qkv_order

    src = Path(cfg.hf_config.hf_dir or "")
    layout, state, hf_config, model_config = read_source(src)
    weights, unused = formats.split_unused(state, layout)
    order = cfg.qkv_order
    if layout == "hf" and order not in ("auto", "interleaved"):
        raise ConfigError(f"--cfg.qkv_order {order}: the HF remote-code checkpoint {src} is always per-head interleaved")
    if order == "auto":
        order = "interleaved" if layout == "hf" else probe_qkv_order(weights, hf_config, src, cfg.probe_ids)
    conv = VisualGLMConverter(layout, order)  # type: ignore[arg-type]
    par = cfg.parallel_config
    placement = conv.placement(hf_config, par.tp_size, {"vit": par.vit_pp_layers, "llm": par.llm_pp_layers})
    plan = conv.plan(hf_config, placement, present_hf=set(weights))
    check_keys(plan, set(weights), str(src))
    source = DictSource(weights)
    check_shapes(plan, source, par.tp_size)
    lay = placement.layout(converter=conv.name, hf_key_style="old")
    lay.extra.update(visualglm_source="sat" if layout == "sat" else "hf_bin", qkv_order=order)
    with atomic_dir(cfg.mm_dir, cfg.overwrite) as tmp:
        copy_aux_files(src, tmp)  # tokenizer files (ice_text.model) too; SAT's ``latest`` is not ours
        (tmp / "latest").unlink(missing_ok=True)
        if model_config is not None:
            (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        write_mm(plan, source, tmp, lay, progress=progress)
        if unused:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in unused.items()}, str(tmp / UNUSED_FILE))


def mm_full_state(mm_dir: str, iteration: str | None, hf_dir: str | None, layout: str, order: str | None
                  ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(HF config, whole model in the ``layout``'s names)`` from an mm directory of any tp/pp layout
    (``layout`` ``mm``: mm's own names)."""
    from mm_convert.engine import mm_plan
    from mm_visualglm.convert import VisualGLMConverter

    conv = VisualGLMConverter("safetensors" if layout == "mm" else layout, order)  # type: ignore[arg-type]
    hf_config, _, plan, source = mm_plan(conv, mm_dir, iteration, hf_dir)
    out: dict[str, torch.Tensor] = {}
    try:
        for it in source.order(plan.items):
            if layout == "mm":
                out[it.mm_key] = source.full(it)
            else:
                out.update(zip(it.hf_keys, it.rule.op.inverse(source.full(it)), strict=True))
    finally:
        source.close()
    return hf_config, out


def mm_to_pickled(cfg: VisualGLMFromMmConfig, target: str, recorded: Mapping[str, Any]) -> None:
    from safetensors.torch import load_file

    layout = "sat" if target == "sat" else "hf"
    same = recorded.get("visualglm_source") == target
    order = recorded.get("qkv_order") if same else None
    hf_config, state = mm_full_state(cfg.mm_dir, cfg.iteration, cfg.hf_config.hf_dir, layout, order)
    unused_file = Path(cfg.mm_dir) / UNUSED_FILE
    dtype = state["transformer.word_embeddings.weight"].dtype
    state.update(load_file(str(unused_file)) if same and unused_file.is_file()
                 else formats.make_unused(hf_config, layout, dtype))
    mm_dir = Path(cfg.mm_dir)
    with atomic_dir(cfg.save_hf_dir, cfg.overwrite) as tmp:
        if layout == "sat":
            saved = mm_dir / "model_config.json"
            model_config = json.loads(saved.read_text()) if same and saved.is_file() else formats.sat_config_of_hf(hf_config)
            formats.write_sat(tmp, state, model_config)
            if same and saved.is_file():
                shutil.copy2(saved, tmp / "model_config.json")
        else:
            copy_aux_files(Path(cfg.hf_config.hf_dir) if cfg.hf_config.hf_dir else mm_dir, tmp)
            (tmp / "model_config.json").unlink(missing_ok=True)
            (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
            formats.write_hf_bin(tmp, state, int(cfg.max_shard_size_gb * 1024**3))
    _log(f"wrote the {target} layout (LM q/k/v {'recorded order ' + str(order) if order else 'in its own order'}) "
         f"to {cfg.save_hf_dir}")


def recorded_source(mm_dir: str, iteration: str | None) -> dict[str, Any]:
    try:
        return dict(read_layout(mm_dir, iteration).extra)
    except ConversionError:
        return {}


def export_parts(mm_dir: str, save_dir: str, iteration: str | None = None, overwrite: bool = False) -> None:
    """``vit.safetensors`` (``image_encoder.encoder``), ``qformer.safetensors`` (Q-Former + ``glm_proj``) and
    ``glm.safetensors`` (ChatGLM), each keyed as its module's own state dict, plus ``config.json``."""
    from safetensors.torch import save_file

    hf_config, state = mm_full_state(mm_dir, iteration, None, "mm", None)
    with atomic_dir(save_dir, overwrite, "--overwrite") as tmp:
        for part, prefix in PARTS.items():
            save_file({k[len(prefix):]: v.contiguous() for k, v in state.items() if k.startswith(prefix)},
                      str(tmp / f"{part}.safetensors"), metadata={"format": "pt", "module": prefix.rstrip(".")})
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    _log(f"wrote {', '.join(p + '.safetensors' for p in PARTS)} to {save_dir}")
