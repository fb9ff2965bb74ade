"""InternVL3 <-> mm: a declarative rule table on top of the mm-convert engine, for both checkpoint layouts.

- ``-hf`` (transformers): ``vision_tower.*``, ``multi_modal_projector.*``, ``language_model.model.*``,
  ``language_model.lm_head.*`` as saved (the in-memory spellings ``model.vision_tower.*``,
  ``model.language_model.*``, ``lm_head.*`` are read as aliases); q, k, v stored apart.
- original remote code (``InternVLChatModel``): ``vision_model.*`` with a fused ``attn.qkv``,
  ``mlp1.{0,1,3}.*`` and the same ``language_model.*``; read from config.json and safetensors only
  (``--cfg.trust_remote_code True`` is accepted, nothing runs).

The layout is the one config.json declares (``remote_layout.layout_of``), so a checkpoint converts back
to the layout it came from; ``--cfg.hf_layout`` on ``mm_to_hf`` (``hf_layout`` on ``dcp_to_hf``)
writes the other one, with its config.json.

Splits:
- ViT: ``[Q; K; V]`` (no interleave), split by whole heads, uneven allowed (InternViT-6B's 25 heads at
  tp 8: the first ``heads mod tp`` ranks take one head more); the attention output projection and
  the 6B's q/k norms (over all heads) split by the same heads.
- LLM: q/k/v interleaved per GQA group, ``[gate; up]`` fused, vocabulary split with the first
  ``V mod tp`` ranks taking one extra row (151674 divides by no common tp size).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mm_convert.config import MmToHfConfig
from mm_convert.converter import Converter
from mm_core.checkpoint.errors import ConfigError
from mm_core.checkpoint.ops import COLUMN, IDENTITY, REPLICATED, ROW, Concat, Split, Transform
from mm_core.checkpoint.rules import Rule
from mm_core.family.decoder_rules import check_decoder_tp, decoder_rules, layer_rules
from mm_core.layout import Placement
from mm_internvl.remote_layout import HfLayout, check_layout, config_for_layout, context_token_id, layout_of

VIT = "image_encoder.encoder.encoder.layers.{layer}."
EMB = "image_encoder.encoder.embeddings."
PROJ = "image_encoder.projector."
HF_LLM = "language_model.model.layers.{layer}."
EMBED = "language_model.model.embed_tokens.weight"


@dataclass(frozen=True)
class VisionNames:
    """Where one layout keeps the vision encoder and projector (mm name -> HF name)."""

    layer: str  # prefix with {layer}
    per_layer: dict[str, str]  # mm suffix -> HF suffix (qkv: see fused_qkv)
    fused_qkv: bool  # one ``[Q; K; V]`` tensor (remote code) or q, k, v apart (-hf)
    qkv: str  # HF suffix of the fused tensor, or the attention module holding {q,k,v}_proj
    fixed: dict[str, str]  # embeddings, final norm and projector: mm name -> HF name (without .weight/.bias)


HF_NAMES = VisionNames(
    layer="vision_tower.encoder.layer.{layer}.",
    per_layer={"input_layernorm": "layernorm_before", "pre_mlp_layernorm": "layernorm_after",
               "self_attention.q_layernorm": "attention.q_norm", "self_attention.k_layernorm": "attention.k_norm",
               "self_attention.linear_proj": "attention.projection_layer", "mlp.linear_fc1": "mlp.fc1",
               "mlp.linear_fc2": "mlp.fc2", "ls1": "lambda_1", "ls2": "lambda_2"},
    fused_qkv=False, qkv="attention",
    fixed={EMB + "class_embedding": "vision_tower.embeddings.cls_token",
           EMB + "patch_embedding": "vision_tower.embeddings.patch_embeddings.projection",
           EMB + "position_embedding": "vision_tower.embeddings.position_embeddings",
           "image_encoder.encoder.final_layernorm": "vision_tower.layernorm",
           PROJ + "norm": "multi_modal_projector.layer_norm", PROJ + "linear_fc1": "multi_modal_projector.linear_1",
           PROJ + "linear_fc2": "multi_modal_projector.linear_2"},
)
REMOTE_NAMES = VisionNames(
    layer="vision_model.encoder.layers.{layer}.",
    per_layer={"input_layernorm": "norm1", "pre_mlp_layernorm": "norm2", "self_attention.q_layernorm": "attn.q_norm",
               "self_attention.k_layernorm": "attn.k_norm", "self_attention.linear_proj": "attn.proj",
               "mlp.linear_fc1": "mlp.fc1", "mlp.linear_fc2": "mlp.fc2", "ls1": "ls1", "ls2": "ls2"},
    fused_qkv=True, qkv="attn.qkv",
    fixed={EMB + "class_embedding": "vision_model.embeddings.class_embedding",
           EMB + "patch_embedding": "vision_model.embeddings.patch_embedding",
           EMB + "position_embedding": "vision_model.embeddings.position_embedding",
           "image_encoder.encoder.final_layernorm": "vision_model.layernorm",
           PROJ + "norm": "mlp1.0", PROJ + "linear_fc1": "mlp1.1", PROJ + "linear_fc2": "mlp1.3"},
)
NAMES: dict[str, VisionNames] = {"hf": HF_NAMES, "remote_code": REMOTE_NAMES}


def _parsed(hf: Mapping[str, Any]):
    from mm_core.errors import ConfigError as CoreConfigError
    from mm_internvl.config import parse_config

    try:
        return parse_config(dict(hf))
    except CoreConfigError as e:
        raise ConfigError(str(e)) from e


def vision_rules(cfg: Any, names: VisionNames) -> list[Rule]:
    """InternViT and the projector in one layout's names."""
    v = cfg.vision
    heads = "vision_config.num_attention_heads"
    by_head = Split(dim=0, unit=v.head_dim, uneven=True, what=heads)  # q/k norm weights span all heads
    qkv_split = Split(dim=0, parts=3, unit=v.head_dim, uneven=True, what=heads)
    proj_split = Split(dim=1, unit=v.head_dim, uneven=True, what=heads)  # the same heads as qkv's rows
    layer = layer_rules(VIT, names.layer, "vit")
    f = names.fixed

    def fixed(mm: str, leaf: str | None, place: str, tp: Any = REPLICATED) -> Rule:
        suffix = f".{leaf}" if leaf else ""
        return Rule(mm + suffix, (f[mm] + suffix,), "vit", place=place, tp=tp)

    rules = [fixed(EMB + "class_embedding", None, "first"), fixed(EMB + "patch_embedding", "weight", "first"),
             fixed(EMB + "patch_embedding", "bias", "first"), fixed(EMB + "position_embedding", None, "first")]
    n = names.per_layer
    for p in ("weight",) if v.norm_type == "rms_norm" else ("weight", "bias"):
        rules += [layer(f"input_layernorm.{p}", f"{n['input_layernorm']}.{p}"),
                  layer(f"pre_mlp_layernorm.{p}", f"{n['pre_mlp_layernorm']}.{p}")]
    for p in ("weight", "bias") if v.qkv_bias else ("weight",):
        hf_qkv: tuple[str, ...] = (f"{names.qkv}.{p}",) if names.fused_qkv else tuple(
            f"{names.qkv}.{x}_proj.{p}" for x in "qkv")
        op: Transform = IDENTITY if names.fused_qkv else Concat(parts=3)
        rules.append(layer(f"self_attention.linear_qkv.{p}", hf_qkv, op=op, tp=qkv_split))
    if v.qk_norm:
        rules += [layer(f"self_attention.{x}_layernorm.weight", f"{n[f'self_attention.{x}_layernorm']}.weight",
                        tp=by_head) for x in "qk"]
    rules += [
        layer("self_attention.linear_proj.weight", f"{n['self_attention.linear_proj']}.weight", tp=proj_split),
        layer("self_attention.linear_proj.bias", f"{n['self_attention.linear_proj']}.bias"),
        layer("mlp.linear_fc1.weight", f"{n['mlp.linear_fc1']}.weight", tp=COLUMN),
        layer("mlp.linear_fc1.bias", f"{n['mlp.linear_fc1']}.bias", tp=COLUMN),
        layer("mlp.linear_fc2.weight", f"{n['mlp.linear_fc2']}.weight", tp=ROW),
        layer("mlp.linear_fc2.bias", f"{n['mlp.linear_fc2']}.bias"),
        layer("ls1", n["ls1"]),
        layer("ls2", n["ls2"]),
    ]
    if v.final_norm:
        rules += [fixed("image_encoder.encoder.final_layernorm", p, "last") for p in ("weight", "bias")]
    return rules + [
        fixed(PROJ + "norm", "weight", "last"), fixed(PROJ + "norm", "bias", "last"),
        fixed(PROJ + "linear_fc1", "weight", "last", COLUMN), fixed(PROJ + "linear_fc1", "bias", "last", COLUMN),
        fixed(PROJ + "linear_fc2", "weight", "last", ROW), fixed(PROJ + "linear_fc2", "bias", "last"),
    ]


@dataclass
class InternVLMmToHfConfig(MmToHfConfig):
    """mm_to_hf settings (the layout is read from the mm dir itself).

    Args:
        hf_layout: the HF checkpoint layout to write: "hf" (transformers, the '-hf' repositories) or
            "remote_code" (the original InternVLChatModel repositories); default: the one converted from
    """

    hf_layout: HfLayout | None = None


class InternVLConverter(Converter):
    """InternVL3 (Qwen2/2.5 LLM, InternViT-300M or -6B), either HF layout: HF <-> mm (tp/pp) <-> DCP."""

    modules = ("vit", "llm")
    # transformers' in-memory spellings of the -hf names (the remote-code names have none)
    HF_ALIASES = (("model.vision_tower.", "vision_tower."), ("model.multi_modal_projector.", "multi_modal_projector."),
                  ("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."))

    def __init__(self) -> None:
        self._write_layout: HfLayout | None = None  # set while a verb writes a chosen layout

    @property
    def hf_aliases(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        """Writing the remote-code layout never uses the -hf in-memory spellings."""
        return () if self._write_layout == "remote_code" else self.HF_ALIASES

    def layout(self, hf: Mapping[str, Any]) -> HfLayout:
        """The HF layout the rules name: the one being written, else the one ``hf`` declares."""
        return self._write_layout or layout_of(hf)

    def depths(self, hf: Mapping[str, Any]) -> dict[str, int]:
        cfg = _parsed(hf)
        return {"vit": cfg.vision.depth, "llm": cfg.text.num_layers}

    def tied(self, hf: Mapping[str, Any]) -> bool:
        return _parsed(hf).tie_word_embeddings

    def check(self, hf: Mapping[str, Any], placement: Placement) -> None:
        check_decoder_tp(_parsed(hf).text.num_kv_heads, placement.tp_size,
                         "llm_config.num_key_value_heads" if layout_of(hf) == "remote_code"
                         else "text_config.num_key_value_heads")

    def rules(self, hf: Mapping[str, Any]) -> list[Rule]:
        cfg = _parsed(hf)
        t = cfg.text
        return vision_rules(cfg, NAMES[self.layout(hf)]) + decoder_rules(
            heads=t.num_heads, kv_heads=t.num_kv_heads, head_dim=t.head_dim, hf_layer=HF_LLM, hf_embedding=EMBED,
            hf_final_norm="language_model.model.norm.weight", hf_lm_head="language_model.lm_head.weight")

    # -- verbs that may write the other layout ------------------------------------------------------

    @contextlib.contextmanager
    def writing(self, layout: HfLayout | None) -> Iterator[None]:
        """Name HF tensors in ``layout`` while a verb writes (the mm side is the same for both)."""
        self._write_layout = layout
        try:
            yield
        finally:
            self._write_layout = None

    def mm_to_hf(self, cfg: InternVLMmToHfConfig) -> None:  # type: ignore[override]
        """Convert an mm checkpoint (layout read from the mm dir itself) back into an HF directory."""
        layout = check_layout(cfg.hf_layout, "--cfg.hf_layout")
        with self.writing(layout):
            super().mm_to_hf(cfg)
        if layout is not None:
            rewrite_config(cfg.save_hf_dir, layout)

    def dcp_to_hf(self, hf_dir: str, dcp_dir: str, save_dir: str, overwrite: bool = False,
                  trust_remote_code: bool = False, hf_layout: HfLayout | None = None) -> None:
        """Write a DCP checkpoint (e.g. ``save/iter_0000100``) as an HF directory.

        Args:
            hf_dir: the original HF directory (config.json, tokenizer and processor files are copied)
            dcp_dir: a DCP checkpoint directory, or a save dir with latest_checkpointed_iteration.txt
            save_dir: output HF directory
            overwrite: replace a non-empty save_dir
            trust_remote_code: accepted for compatibility; conversion never runs model code
            hf_layout: "hf" or "remote_code" (see mm_to_hf); default: the layout of hf_dir
        """
        layout = check_layout(hf_layout, "--hf_layout")
        with self.writing(layout):
            super().dcp_to_hf(hf_dir, dcp_dir, save_dir, overwrite, trust_remote_code)
        if layout is not None:
            rewrite_config(save_dir, layout)


def rewrite_config(hf_dir: str | Path, layout: HfLayout) -> None:
    """Replace a written HF dir's config.json with its ``layout`` equivalent (atomically)."""
    import json

    path = Path(hf_dir) / "config.json"
    cfg = json.loads(path.read_text())
    if layout_of(cfg) == layout:
        return
    tmp = path.with_name(".config.json.tmp")
    out = config_for_layout(cfg, layout, str(path), context_token_id(hf_dir))
    tmp.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
