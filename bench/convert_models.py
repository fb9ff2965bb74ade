"""The checkpoints bench/convert.py builds: each model's config.json and tensor shapes, by family.

Qwen2.5-VL-3B's names and shapes are written out (they are the Hub's old-style names); InternVL3-8B's
come from mm-internvl's ``bench_shapes`` (the ``-hf`` layout). GLM-4.1V-9B's come from transformers itself: the reference class is built on the meta device from the Hub's
config values and its state dict gives the names ``save_pretrained`` writes (for Glm4v the saved
names equal the module names) and every shape, so nothing here can drift from the real model.

GLM-4.5V's come the same way from ``Glm4vMoeForConditionalGeneration``, its 3-D expert tensors
written per expert as the Hub stores them (``save_pretrained`` does the same).

For GLM-4.1V, GLM-4.5V and InternVL3 ``scale`` shrinks the layer counts only, so every tensor keeps its real shape and the
peak memory of a streaming conversion (one tensor at a time) is the real model's; quick runs
(scale < 0.1) also shrink the vocabulary so they take seconds. Qwen2.5-VL-3B keeps its earlier
meaning (layers and vocabulary scale together), so its stored figures stay comparable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BenchModel:
    """One model row of the conversion benchmark."""

    title: str  # what the table calls it
    converter: str  # the mm-convert converter name
    layers: tuple[int, int]  # real (vision, text) layer counts, for the extrapolation label
    config: Callable[[float], dict]
    shapes: Callable[[dict], dict[str, tuple[int, ...]]]
    counts: Callable[[dict], tuple[int, int]]  # (vision, text) layers of a built config
    tp: int = 2  # hf_to_mm's tp size (pp is 2); 1 for MoE models, whose experts every tp rank repeats
    expert_merge: bool = False  # also time ExpertMergeDcpConverter hf_to_dcp / dcp_to_hf (GLM-4.5V)
    naive: bool = True  # the load-everything baseline (off where two copies of the model would not fit in memory)


def _scaled(n: int, scale: float) -> int:
    return n if scale >= 1 else max(2, round(n * scale))


# -- Qwen2.5-VL-3B --------------------------------------------------------------------------------

QWEN_VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 2048,
               "fullatt_block_indexes": [7, 15, 23, 31], "window_size": 112, "patch_size": 14,
               "spatial_merge_size": 2, "temporal_patch_size": 2, "in_chans": 3, "tokens_per_second": 2,
               "model_type": "qwen2_5_vl"}
QWEN_TEXT = {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
             "num_key_value_heads": 2, "vocab_size": 151936, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
             "max_position_embeddings": 128000, "tie_word_embeddings": True}


def qwen_config(scale: float) -> dict:
    """The 3B config.json (flat text fields like the Hub's), with layers and vocab scaled."""
    v, t = dict(QWEN_VISION), dict(QWEN_TEXT)
    if scale < 1:
        v["depth"] = _scaled(32, scale)
        v["fullatt_block_indexes"] = [v["depth"] - 1]
        t["num_hidden_layers"] = _scaled(36, scale)
        t["vocab_size"] = max(1024, round(151936 * scale / 64) * 64)
    return {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
            "torch_dtype": "bfloat16", "vision_config": v, **t, "image_token_id": 151655,
            "video_token_id": 151656, "vision_start_token_id": 151652, "vision_end_token_id": 151653}


def qwen_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    v, h, inter = cfg["vision_config"], cfg["hidden_size"], cfg["intermediate_size"]
    vh, vi = v["hidden_size"], v["intermediate_size"]
    hd = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    merged = vh * v["spatial_merge_size"] ** 2
    out: dict[str, tuple[int, ...]] = {"visual.patch_embed.proj.weight": (vh, 3, 2, 14, 14)}
    for i in range(v["depth"]):
        p = f"visual.blocks.{i}."
        out.update({p + "norm1.weight": (vh,), p + "norm2.weight": (vh,), p + "attn.qkv.weight": (3 * vh, vh),
                    p + "attn.qkv.bias": (3 * vh,), p + "attn.proj.weight": (vh, vh), p + "attn.proj.bias": (vh,),
                    p + "mlp.gate_proj.weight": (vi, vh), p + "mlp.gate_proj.bias": (vi,),
                    p + "mlp.up_proj.weight": (vi, vh), p + "mlp.up_proj.bias": (vi,),
                    p + "mlp.down_proj.weight": (vh, vi), p + "mlp.down_proj.bias": (vh,)})
    out.update({"visual.merger.ln_q.weight": (vh,), "visual.merger.mlp.0.weight": (merged, merged),
                "visual.merger.mlp.0.bias": (merged,), "visual.merger.mlp.2.weight": (h, merged),
                "visual.merger.mlp.2.bias": (h,), "model.embed_tokens.weight": (cfg["vocab_size"], h)})
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out.update({p + "self_attn.q_proj.weight": (h, h), p + "self_attn.q_proj.bias": (h,),
                    p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.k_proj.bias": (kv,),
                    p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.v_proj.bias": (kv,),
                    p + "self_attn.o_proj.weight": (h, h), p + "mlp.gate_proj.weight": (inter, h),
                    p + "mlp.up_proj.weight": (inter, h), p + "mlp.down_proj.weight": (h, inter),
                    p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)})
    out["model.norm.weight"] = (h,)
    return out


# -- GLM-4.1V-9B ----------------------------------------------------------------------------------

GLM_VISION = {"depth": 24, "hidden_size": 1536, "num_heads": 12, "intermediate_size": 13696, "out_hidden_size": 4096,
              "patch_size": 14, "image_size": 336, "spatial_merge_size": 2, "temporal_patch_size": 2,
              "in_channels": 3, "rms_norm_eps": 1e-5, "hidden_act": "silu", "attention_bias": False}
GLM_TEXT = {"hidden_size": 4096, "intermediate_size": 13696, "num_hidden_layers": 40, "num_attention_heads": 32,
            "num_key_value_heads": 2, "vocab_size": 151552, "rms_norm_eps": 1e-5, "attention_bias": True,
            "partial_rotary_factor": 0.5, "max_position_embeddings": 65536,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12],
                                "partial_rotary_factor": 0.5}}


def glm_config(scale: float) -> dict:
    """GLM-4.1V-9B's config.json values (reference/glm-and-visualglm.md B), layers scaled."""
    v, t = dict(GLM_VISION), dict(GLM_TEXT)
    v["depth"] = _scaled(24, scale)
    t["num_hidden_layers"] = _scaled(40, scale)
    if scale < 0.1:
        t["vocab_size"] = max(1024, round(151552 * scale / 64) * 64)
    return {"architectures": ["Glm4vForConditionalGeneration"], "model_type": "glm4v", "torch_dtype": "bfloat16",
            "tie_word_embeddings": False, "vision_config": v, "text_config": t, "image_token_id": 151343,
            "video_token_id": 151344, "image_start_token_id": 151339, "image_end_token_id": 151340,
            "video_start_token_id": 151341, "video_end_token_id": 151342}


def glm_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes of transformers' Glm4vForConditionalGeneration for ``cfg`` (meta device: no memory)."""
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration

    with torch.device("meta"):
        model = Glm4vForConditionalGeneration(Glm4vConfig(**cfg))
    return {k: tuple(t.shape) for k, t in model.state_dict().items()}


# -- GLM-4.5V (106B-A12B MoE) ------------------------------------------------------------------------

GLM45_TEXT = {**GLM_TEXT, "num_hidden_layers": 46, "num_attention_heads": 96, "num_key_value_heads": 8, "head_dim": 128,
              "intermediate_size": 10944, "moe_intermediate_size": 1408, "n_routed_experts": 128,
              "num_experts_per_tok": 8, "n_shared_experts": 1, "first_k_dense_replace": 1, "norm_topk_prob": True,
              "routed_scaling_factor": 1.0, "n_group": 1, "topk_group": 1, "router_aux_loss_coef": 1e-4}


def glm45v_config(scale: float) -> dict:
    """GLM-4.5V's config.json values (reference/glm-and-visualglm.md B) at real widths and vocabulary;
    ``scale`` shrinks the layer counts only (layer 0 dense, then MoE layers: 0.065 keeps 2 of them, 0.04 one)."""
    cfg = glm_config(1.0)
    v, t = cfg["vision_config"], dict(GLM45_TEXT)
    v["depth"], v["intermediate_size"] = _scaled(24, scale), 10944  # the merger's SwiGLU width
    t["num_hidden_layers"] = 46 if scale >= 1 else max(2, round(46 * scale))
    return {**cfg, "architectures": ["Glm4vMoeForConditionalGeneration"], "model_type": "glm4v_moe",
            "text_config": t, "image_token_id": 151363, "video_token_id": 151364}


def glm45v_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """transformers' Glm4vMoeForConditionalGeneration on the meta device, with each layer's 3-D expert
    tensors written per expert as ``save_pretrained`` (and the Hub) store them."""
    import re

    from transformers import Glm4vMoeConfig, Glm4vMoeForConditionalGeneration

    with torch.device("meta"):
        model = Glm4vMoeForConditionalGeneration(Glm4vMoeConfig(**cfg))
    out: dict[str, tuple[int, ...]] = {}
    for k, t in model.state_dict().items():
        stacked = re.fullmatch(r"(.*\.mlp\.experts\.)(gate_up_proj|down_proj)", k)
        if stacked is None:
            out[k] = tuple(t.shape)
            continue
        e, rows, cols = t.shape  # [E, 2I, H] / [E, H, I]
        for x in range(e):
            if stacked.group(2) == "gate_up_proj":
                out.update({f"{stacked.group(1)}{x}.{p}_proj.weight": (rows // 2, cols) for p in ("gate", "up")})
            else:
                out[f"{stacked.group(1)}{x}.down_proj.weight"] = (rows, cols)
    return out


# -- InternVL3-8B (the family's own shape helper: either checkpoint layout, transformers-derived) --------

def internvl_config(scale: float) -> dict:
    from mm_internvl.bench_shapes import internvl3_8b_config

    return internvl3_8b_config(scale)


def internvl_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    from mm_internvl.bench_shapes import internvl3_shapes

    return internvl3_shapes(cfg)


def internvl_counts(cfg: dict) -> tuple[int, int]:
    from mm_internvl.bench_shapes import internvl3_counts

    return internvl3_counts(cfg)


MODELS: dict[str, BenchModel] = {
    "qwen2_5_vl_3b": BenchModel("Qwen2.5-VL-3B", "Qwen2_5_VLConverter", (32, 36), qwen_config, qwen_shapes,
                                lambda c: (c["vision_config"]["depth"], c["num_hidden_layers"])),
    "glm4_1v_9b": BenchModel("GLM-4.1V-9B", "GlmConverter", (24, 40), glm_config, glm_shapes,
                             lambda c: (c["vision_config"]["depth"], c["text_config"]["num_hidden_layers"])),
    "glm4_5v": BenchModel("GLM-4.5V", "GlmConverter", (24, 46), glm45v_config, glm45v_shapes,
                          lambda c: (c["vision_config"]["depth"], c["text_config"]["num_hidden_layers"]),
                          tp=1, expert_merge=True, naive=False),
    "internvl3_8b": BenchModel("InternVL3-8B", "InternVLConverter", (24, 28), internvl_config, internvl_shapes,
                               internvl_counts),
}
