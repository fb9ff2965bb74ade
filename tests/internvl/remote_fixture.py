"""Tiny InternVL checkpoints in the original remote-code layout, made from a tiny ``-hf`` one.

The renames are transformers' ``convert_internvl_weights_to_hf`` mapping run backwards (written out
here, independently of mm-internvl's rule table, so the converter is checked against it): InternViT's
q, k and v are fused into ``attn.qkv`` (``[Q; K; V]``), the projector becomes ``mlp1.{0,1,3}``, and
config.json is the ``InternVLChatModel`` shape (``llm_config``, InternViT's own field names).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

# -hf name -> remote-code name (regex, applied in order)
RENAMES = [
    (r"^vision_tower\.", "vision_model."),
    (r"\.encoder\.layer\.", ".encoder.layers."),
    (r"\.embeddings\.cls_token$", ".embeddings.class_embedding"),
    (r"\.embeddings\.position_embeddings$", ".embeddings.position_embedding"),
    (r"\.embeddings\.patch_embeddings\.projection\.", ".embeddings.patch_embedding."),
    (r"\.lambda_(\d)$", r".ls\1"),
    (r"\.attention\.projection_layer\.", ".attn.proj."),
    (r"\.attention\.", ".attn."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"^multi_modal_projector\.layer_norm\.", "mlp1.0."),
    (r"^multi_modal_projector\.linear_1\.", "mlp1.1."),
    (r"^multi_modal_projector\.linear_2\.", "mlp1.3."),
]


def remote_name(key: str) -> str:
    for pattern, repl in RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def remote_config(hf: dict[str, Any]) -> dict[str, Any]:
    """An InternVLChatModel config.json for the model of the ``-hf`` config ``hf`` (as OpenGVLab writes them)."""
    v, t = hf["vision_config"], hf["text_config"]
    size = v["image_size"][0]
    llm = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": t["hidden_size"],
           "intermediate_size": t["intermediate_size"], "num_hidden_layers": t["num_hidden_layers"],
           "num_attention_heads": t["num_attention_heads"], "num_key_value_heads": t["num_key_value_heads"],
           "vocab_size": t["vocab_size"], "rms_norm_eps": t["rms_norm_eps"], "rope_theta": 1e6, "hidden_act": "silu",
           "max_position_embeddings": 32768, "tie_word_embeddings": False, "use_sliding_window": False,
           "torch_dtype": "bfloat16", "_name_or_path": "./pretrained/Qwen2.5-7B-Instruct",
           # as in OpenGVLab's InternVL3 files: the MoE fields of their shared config class
           "moe_config": None, "bias": True, "use_bfloat16": True, "max_window_layers": 70}
    rope = t.get("rope_parameters") or {}
    if rope.get("rope_type") == "dynamic":  # InternVL3's files: dynamic NTK scaling, factor 2
        llm["rope_scaling"] = {"factor": rope["factor"], "rope_type": "dynamic", "type": "dynamic"}
        llm["max_position_embeddings"] = t["max_position_embeddings"]
    vision = {"architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", "hidden_size": v["hidden_size"],
              "num_attention_heads": v["num_attention_heads"], "num_hidden_layers": v["num_hidden_layers"],
              "intermediate_size": v["intermediate_size"], "image_size": size, "patch_size": v["patch_size"][0],
              "num_channels": 3, "qkv_bias": v["attention_bias"], "qk_normalization": v["use_qk_norm"],
              "norm_type": v["norm_type"], "layer_norm_eps": 1e-6, "hidden_act": "gelu", "initializer_factor": 0.1,
              "drop_path_rate": 0.1, "use_flash_attn": True, "dropout": 0.0, "attention_dropout": 0.0,
              "initializer_range": 0.02, "use_mean_pooling": v["use_mean_pooling"], "capacity_factor": 1.2,
              "moe_coeff_ratio": 0.5, "noisy_gate_policy": "RSample_before", "use_moe": False, "num_experts": 8,
              "_name_or_path": "OpenGVLab/InternViT-300M-448px-V2_5",
              "auto_map": {"AutoConfig": "configuration_intern_vit.InternVisionConfig"}}
    return {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat",
            "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                         "AutoModel": "modeling_internvl_chat.InternVLChatModel"},
            "downsample_ratio": hf["downsample_ratio"], "dynamic_image_size": True, "force_image_size": size,
            "max_dynamic_patch": 12, "min_dynamic_patch": 1, "ps_version": "v2", "select_layer": -1,
            "template": "internvl2_5", "use_thumbnail": True, "use_backbone_lora": 0, "use_llm_lora": 0,
            "torch_dtype": "bfloat16", "tie_word_embeddings": False, "llm_config": llm, "vision_config": vision}


def write_remote_copy(hf_dir: Path, out: Path) -> Path:
    """``out``: the checkpoint of ``hf_dir`` in the remote-code layout (tensors renamed, ViT qkv fused)."""
    out.mkdir(parents=True)
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(hf_dir / "model.safetensors"), "pt") as f:
        for key in f.keys():
            tensors[remote_name(key)] = f.get_tensor(key)
    fused: dict[str, torch.Tensor] = {}
    for key in sorted(tensors):
        m = re.match(r"(vision_model\.encoder\.layers\.\d+\.attn)\.q_proj\.(weight|bias)$", key)
        if m:
            parts = [tensors.pop(f"{m[1]}.{x}_proj.{m[2]}") for x in "qkv"]
            fused[f"{m[1]}.qkv.{m[2]}"] = torch.cat(parts)
    tensors.update(fused)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    hf = json.loads((hf_dir / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(remote_config(hf), indent=2))
    (out / "added_tokens.json").write_text(json.dumps({"<img>": 298, "</img>": 299, "<IMG_CONTEXT>": 300}))
    # the remote repositories ship their code; mm copies it like any other file and never imports it
    (out / "modeling_internvl_chat.py").write_text("raise RuntimeError('remote code must not run')\n")
    return out
