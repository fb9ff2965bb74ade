"""VisualGLM-6B <-> mm (``VisualGLMConverter``): the rule tables of both published layouts.

Both layouts name the LM ``transformer.*`` and keep the ViT and Q-Former as SAT modules; they differ
in the image encoder's prefix (SAT ``mixins.eva.model.``, HF remote code ``image_encoder.``), the LM
head (``mixins.chatglm-final.lm_head.weight`` / ``lm_head.weight``) and the LM's fused q/k/v rows
(SAT: contiguous thirds ``[Q; K; V]``; HF: per head ``[q_h; k_h; v_h]``). mm keeps ``[Q; K; V]``
everywhere (LM, ViT, Q-Former; ``key_value`` = ``[K; V]``): a tensor-parallel rank takes whole heads of
each third, and LoRA gets one A/B pair per q, k and v as the original recipe (the rule's sections).

Layouts: ``sat`` (SAT names), ``hf`` (HF remote-code names, per-head q/k/v: the ``.bin`` files) and
``safetensors`` (HF names with mm's q/k/v thirds: no published VisualGLM ships safetensors, so this
is mm's own HF-style directory, what ``tiny_checkpoint`` writes and the engine reads directly).

Tensors no module uses (SAT's ``transformer.position_embeddings`` and rotary ``inv_freq``, HF's
per-layer ``inv_freq``) are not in the table; ``sources.py`` keeps them aside so a round trip gives
them back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from mm_convert.converter import Converter
from mm_core.checkpoint.errors import ConfigError
from mm_core.checkpoint.ops import COLUMN, IDENTITY, REPLICATED, ROW, VOCAB, Split, Transform
from mm_core.checkpoint.rules import Rule
from mm_core.layout import Placement
from mm_visualglm.layouts_io import VisualGLMFromMmConfig, VisualGLMToMmConfig

SourceLayout = Literal["safetensors", "hf", "sat"]
LAYOUTS: tuple[str, ...] = ("safetensors", "hf", "sat")
ENCODER_PREFIX = {"safetensors": "image_encoder.", "hf": "image_encoder.", "sat": "mixins.eva.model."}
LM_HEAD = {"safetensors": "lm_head.weight", "hf": "lm_head.weight", "sat": "mixins.chatglm-final.lm_head.weight"}
QKV_ORDERS = ("interleaved", "contiguous")  # the LM's fused q/k/v rows: per head (HF) or thirds (SAT, mm)

ENC = "image_encoder.encoder."
QF = "image_encoder.projector.qformer."
LLM = "text_decoder.decoder.layers.{layer}."
# SAT's names inside a transformer layer -> mm's
ATTN_NAMES = (("input_layernorm", "input_layernorm"), ("attention.query_key_value", "self_attention.linear_qkv"),
              ("attention.dense", "self_attention.linear_proj"), ("post_attention_layernorm", "pre_mlp_layernorm"),
              ("mlp.dense_h_to_4h", "mlp.linear_fc1"), ("mlp.dense_4h_to_h", "mlp.linear_fc2"))


def _parsed(hf: Mapping[str, Any]):
    from mm_core.errors import ConfigError as CoreConfigError
    from mm_visualglm.config import parse_config

    try:
        return parse_config(dict(hf))
    except CoreConfigError as e:
        raise ConfigError(str(e)) from e


@dataclass(frozen=True)
class HeadDeinterleave(Transform):
    """Per-head ``[q_h; k_h; v_h]`` rows (HF ChatGLM) -> ``[Q; K; V]`` thirds (mm); weights and biases."""

    heads: int
    head_dim: int

    def forward(self, hf: Sequence[torch.Tensor]) -> torch.Tensor:
        (t,) = hf
        return t.reshape(self.heads, 3, self.head_dim, *t.shape[1:]).transpose(0, 1).reshape(t.shape)

    def inverse(self, mm: torch.Tensor) -> list[torch.Tensor]:
        return [mm.reshape(3, self.heads, self.head_dim, *mm.shape[1:]).transpose(0, 1).reshape(mm.shape).contiguous()]

    def forward_shape(self, shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
        if not shapes[0] or shapes[0][0] != 3 * self.heads * self.head_dim:
            raise ValueError(f"fused q/k/v has shape {tuple(shapes[0])}, expected {3 * self.heads * self.head_dim} rows")
        return tuple(shapes[0])

    def inverse_shapes(self, shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        return [self.forward_shape([shape])]


def layer_rules(mm_prefix: str, src_prefix: str, module: str, *, qkv_split: Split, qkv_op: Transform = IDENTITY,
                place: str = "layer", post_norm: str = "pre_mlp_layernorm") -> list[Rule]:
    """Weights and biases of one SAT transformer layer (``{layer}`` in both prefixes when ``place='layer'``):
    q/k/v and ``dense_h_to_4h`` split by rows, the two output projections' weights by columns.
    ``post_norm``: mm's name of SAT's ``post_attention_layernorm`` (the Q-Former's stays
    ``post_attention_layernorm``: in post order it normalises the attention output)."""
    tp = {"attention.query_key_value": qkv_split, "mlp.dense_h_to_4h": COLUMN}
    rules = []
    for src, mm in ATTN_NAMES:
        mm = post_norm if src == "post_attention_layernorm" else mm
        for p in ("weight", "bias"):
            split = ROW if src in ("attention.dense", "mlp.dense_4h_to_h") and p == "weight" else tp.get(src, REPLICATED)
            op = qkv_op if src == "attention.query_key_value" else IDENTITY
            rules.append(Rule(f"{mm_prefix}{mm}.{p}", (f"{src_prefix}{src}.{p}",), module, op=op, tp=split, place=place))
    return rules


class VisualGLMConverter(Converter):
    """VisualGLM-6B: SAT or HF remote-code checkpoints <-> mm (tp/pp) <-> DCP.

    ``layout``: the source layout the rule table names (see the module docstring; the registry's
    default, ``safetensors``, is what the engine reads). ``qkv_order``: the LM's fused q/k/v rows in the
    source (default: the layout's own: ``hf`` interleaved, ``sat`` and ``safetensors`` contiguous).
    """

    modules = ("vit", "llm")

    def __init__(self, layout: SourceLayout = "safetensors", qkv_order: str | None = None):
        if layout not in LAYOUTS:
            raise ConfigError(f"layout '{layout}' is not a VisualGLM checkpoint layout; use one of {list(LAYOUTS)}")
        order = qkv_order or ("interleaved" if layout == "hf" else "contiguous")
        if order not in QKV_ORDERS:
            raise ConfigError(f"qkv_order '{order}': use one of {list(QKV_ORDERS)}")
        self.layout: SourceLayout = layout
        self.qkv_order = order

    # -- verbs: the pickled layouts (SAT .pt, HF .bin) and the three-part export --------------------

    def hf_to_mm(self, cfg: VisualGLMToMmConfig) -> None:  # type: ignore[override]
        """Convert a SAT, HF ``.bin`` or safetensors VisualGLM directory into the mm layout (tp/pp shards)."""
        from mm_visualglm import formats, layouts_io

        if not cfg.hf_config.hf_dir:
            raise ConfigError("--cfg.hf_config.hf_dir is required for hf_to_mm")
        if formats.detect(cfg.hf_config.hf_dir) == "safetensors":
            super().hf_to_mm(cfg)
        else:
            layouts_io.pickled_to_mm(cfg)

    def mm_to_hf(self, cfg: VisualGLMFromMmConfig) -> None:  # type: ignore[override]
        """Write an mm checkpoint as SAT (``sat``), HF remote-code ``.bin`` (``hf_bin``) or safetensors;
        by default in the layout it was converted from."""
        from mm_visualglm import layouts_io

        recorded = layouts_io.recorded_source(cfg.mm_dir, cfg.iteration)
        target = cfg.layout or recorded.get("visualglm_source", "safetensors")
        if target not in layouts_io.TARGETS:
            raise ConfigError(f"--cfg.layout '{target}': use one of {list(layouts_io.TARGETS)}")
        if target == "safetensors":
            super().mm_to_hf(cfg)
        else:
            layouts_io.mm_to_pickled(cfg, target, recorded)

    def export_parts(self, mm_dir: str, save_dir: str, iteration: str | None = None, overwrite: bool = False) -> None:
        """Write vit.safetensors, qformer.safetensors (Q-Former + glm_proj) and glm.safetensors, each loadable alone.

        Args:
            mm_dir: an mm directory (any tp/pp layout)
            save_dir: output directory
            iteration: which saved iteration; default: the latest
            overwrite: replace a non-empty save_dir
        """
        from mm_visualglm import layouts_io

        layouts_io.export_parts(mm_dir, save_dir, iteration, overwrite)

    # -- the rule table ----------------------------------------------------------------------------

    def depths(self, hf: Mapping[str, Any]) -> dict[str, int]:
        cfg = _parsed(hf)
        return {"vit": cfg.vision.depth, "llm": cfg.text.num_layers}

    def tied(self, hf: Mapping[str, Any]) -> bool:
        return False

    def check(self, hf: Mapping[str, Any], placement: Placement) -> None:
        cfg = _parsed(hf)
        tp = placement.tp_size
        for what, n in (("num_attention_heads", cfg.text.num_heads), ("eva num_attention_heads", cfg.vision.num_heads),
                        ("qformer num_attention_heads", cfg.qformer.num_heads)):
            if n % tp:
                raise ConfigError(f"parallel_config.tp_size {tp} does not divide {what} {n} of the config; "
                                  f"choose a tp_size that divides it")

    def rules(self, hf: Mapping[str, Any]) -> list[Rule]:
        cfg = _parsed(hf)
        t, v, q = cfg.text, cfg.vision, cfg.qformer
        src = ENCODER_PREFIX[self.layout]
        vit, qf = src + "vit.", src + "qformer."

        def first(mm: str, key: str) -> Rule:
            return Rule(ENC + mm, (vit + key,), "vit", place="first")

        def last(mm: str, key: str, **kw: Any) -> Rule:
            return Rule(mm, (key,), "vit", place="last", **kw)

        rules = [first("cls_token.weight", "transformer.word_embeddings.weight"),
                 first("position_embeddings.weight", "transformer.position_embeddings.weight"),
                 first("patch_embed.proj.weight", "mixins.patch_embedding.proj.weight"),
                 first("patch_embed.proj.bias", "mixins.patch_embedding.proj.bias")]
        rules += layer_rules(ENC + "blocks.layers.{layer}.", vit + "transformer.layers.{layer}.", "vit",
                             qkv_split=Split(dim=0, parts=3, unit=v.head_dim, what="eva num_attention_heads"))
        rules += [last(ENC + f"ln_vision.{p}", vit + f"mixins.cls.ln_vision.{p}") for p in ("weight", "bias")]
        rules.append(last(QF + "query_embeddings.weight", qf + "transformer.word_embeddings.weight"))
        qkv = Split(dim=0, parts=3, unit=q.head_dim, what="qformer num_attention_heads")
        for i in range(q.depth):
            mm, sat = f"{QF}layers.{i}.", f"{qf}transformer.layers.{i}."
            rules += layer_rules(mm, sat, "vit", qkv_split=qkv, place="last", post_norm="post_attention_layernorm")
            if i in q.cross_layers:
                kv = Split(dim=0, parts=2, unit=q.head_dim, what="qformer num_attention_heads")
                for p in ("weight", "bias"):
                    rules += [last(f"{mm}cross_attention.linear_q.{p}", f"{sat}cross_attention.query.{p}", tp=COLUMN),
                              last(f"{mm}cross_attention.linear_kv.{p}", f"{sat}cross_attention.key_value.{p}", tp=kv),
                              last(f"{mm}cross_attention.linear_proj.{p}", f"{sat}cross_attention.dense.{p}",
                                   tp=ROW if p == "weight" else REPLICATED),
                              last(f"{mm}post_cross_attention_layernorm.{p}", f"{sat}post_cross_attention_layernorm.{p}")]
        rules += [last(QF + f"final_layernorm.{p}", qf + f"transformer.final_layernorm.{p}") for p in ("weight", "bias")]
        rules += [last(f"image_encoder.projector.linear_proj.{p}", src + f"glm_proj.{p}") for p in ("weight", "bias")]
        qkv_op = HeadDeinterleave(heads=t.num_heads, head_dim=t.head_dim) if self.qkv_order == "interleaved" else IDENTITY
        rules.append(Rule("text_decoder.embedding.word_embeddings.weight", ("transformer.word_embeddings.weight",),
                          "llm", place="first", tp=VOCAB))
        rules += layer_rules(LLM, "transformer.layers.{layer}.", "llm", qkv_op=qkv_op,
                             qkv_split=Split(dim=0, parts=3, unit=t.head_dim, what="num_attention_heads"))
        rules += [Rule(f"text_decoder.decoder.final_layernorm.{p}", (f"transformer.final_layernorm.{p}",), "llm",
                       place="last") for p in ("weight", "bias")]
        rules.append(Rule("text_decoder.output_layer.weight", (LM_HEAD[self.layout],), "llm", place="last", tp=VOCAB))
        return rules
