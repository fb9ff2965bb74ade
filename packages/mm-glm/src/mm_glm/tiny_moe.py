"""Tiny random GLM-4.5V checkpoints in the HF layout (tests, benchmarks; nothing is downloaded).

``save_tiny_model`` writes what the Hub ships from transformers' own
``Glm4vMoeForConditionalGeneration`` (``save_pretrained`` stores the experts per expert, as the Hub
does): GLM-4.1V's tiny vision tower and vocabulary (``mm_glm.tiny``), layer 0 dense and the others
with a few routed experts (top-2) plus a shared expert, an explicit ``head_dim`` (the config class
has no such field: see ``mm_glm.moe_config``), and random router weights and score-correction biases
so that the biased choice differs from the unbiased one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mm_glm.tiny import build_hf_model as glm4v_build_hf_model
from mm_glm.tiny import tiny_config_dict


def tiny_moe_config_dict(*, experts: int = 4, top_k: int = 2, moe_intermediate: int = 48, dense_layers: int = 1,
                         text_layers: int = 3, aux_coef: float = 1e-2, **overrides: Any) -> dict[str, Any]:
    """A GLM-4.5V ``config.json`` dict on top of the GLM-4.1V tiny one."""
    cfg = tiny_config_dict(text_layers=text_layers, **overrides)
    text = cfg["text_config"]
    text.update({"head_dim": text["hidden_size"] // text["num_attention_heads"], "attention_bias": True,
                 "n_routed_experts": experts, "num_experts_per_tok": top_k, "moe_intermediate_size": moe_intermediate,
                 "n_shared_experts": 1, "first_k_dense_replace": dense_layers, "norm_topk_prob": True,
                 "routed_scaling_factor": 1.5, "n_group": 1, "topk_group": 1, "router_aux_loss_coef": aux_coef})
    return {**cfg, "model_type": "glm4v_moe", "architectures": ["Glm4vMoeForConditionalGeneration"]}


def build_hf_model(config: dict[str, Any], *, seed: int = 0, std: float = 0.05):
    """GLM-4.1V's tiny recipe (``mm_glm.tiny``) on transformers' GLM-4.5V, plus routers and score-correction
    biases drawn large enough that experts are clearly preferred (no near-ties) and the bias matters."""
    model = glm4v_build_hf_model(config, seed=seed, std=std,
                                 classes=("Glm4vMoeConfig", "Glm4vMoeForConditionalGeneration"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                p.normal_(0.0, 0.5)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.randn_like(b) * 0.3)
    return model


def save_tiny_model(path: str | Path, *, seed: int = 0, std: float = 0.05, with_processor: bool = False,
                    **config_overrides: Any) -> Path:
    """Write a tiny random HF GLM-4.5V directory with ``save_pretrained``; returns it.
    ``with_processor``: the offline GLM processor files and their ids, as ``mm_glm.tiny.save_tiny_model``."""
    from mm_glm.tiny import PROCESSOR_PIXELS, processor_config_overrides

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if with_processor:
        config_overrides = {**processor_config_overrides(), **config_overrides}
    build_hf_model(tiny_moe_config_dict(**config_overrides), seed=seed, std=std).save_pretrained(path)
    if with_processor:
        from mm_glm.testing_tokenizer import save_glm_processor

        save_glm_processor(path, **PROCESSOR_PIXELS)
    return path
