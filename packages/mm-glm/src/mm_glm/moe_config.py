"""GLM-4.5V's config: GLM-4.1V's vision tower and merger, a text decoder without sandwich norms,
rotate-half partial rotary, and MoE layers from ``first_k_dense_replace`` on.

transformers' ``Glm4vMoeConfig`` parses the file. Two traps are refused by name instead of giving
a silently different model: ``Glm4vMoeTextConfig`` has no ``head_dim`` field, so a file without it
gets ``hidden_size // num_attention_heads`` (GLM-4.5V: 4096 // 96 = 42, not its 128); and without
``partial_rotary_factor`` the mRoPE split does not fit (checked in :func:`mm_glm.config.glm_config`).
Router groups (``n_group``/``topk_group`` other than 1) are not implemented and refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mm_core.errors import ConfigError
from mm_core.family.hf_config import parse_with_transformers
from mm_glm.config import GlmConfig, TextConfig, glm_config
from mm_glm.moe import MoeConfig


@dataclass(frozen=True)
class MoeTextConfig(TextConfig):
    """The GLM-4.5V decoder: dense MLPs (``intermediate_size``) before ``first_k_dense_replace``, MoE after."""

    first_k_dense_replace: int = 1
    moe: MoeConfig | None = None
    router_aux_loss_coef: float = 0.0

    def is_moe(self, layer: int) -> bool:
        """Whether global LLM layer ``layer`` has routed experts."""
        return layer >= self.first_k_dense_replace


def parse_moe_config(hf_config: dict[str, Any] | str | Path) -> GlmConfig:
    """Parse an HF GLM-4.5V config (dict, file or directory) of ``model_type`` ``glm4v_moe``."""
    cfg, raw, source = parse_with_transformers(
        hf_config, model_type="glm4v_moe", config_class="Glm4vMoeConfig", what="GLM-4.5V",
        refused={"glm4v": "is GLM-4.1V (dense); read it with the 'glm4v' model"})
    t = cfg.text_config
    raw_text = raw.get("text_config") or {}
    if "head_dim" not in raw_text and t.hidden_size % t.num_attention_heads:
        raise ConfigError(f"{source}: text_config.head_dim is missing and hidden_size {t.hidden_size} is not a "
                          f"multiple of num_attention_heads {t.num_attention_heads}; add \"head_dim\" (GLM-4.5V: 128)")
    if not t.attention_bias:
        raise ConfigError(f"{source}: text_config.attention_bias false is not supported (GLM-4.5V's q/k/v have biases)")
    if int(t.n_group) != 1 or int(t.topk_group) != 1:
        raise ConfigError(f"{source}: text_config.n_group {t.n_group} / topk_group {t.topk_group}: only one router "
                          "group is supported (GLM-4.5V has 1 / 1)")
    experts, top_k = int(t.n_routed_experts), int(t.num_experts_per_tok)
    if not 0 < top_k <= experts:
        raise ConfigError(f"{source}: text_config.num_experts_per_tok {top_k} must be in 1..n_routed_experts {experts}")
    moe = MoeConfig(num_experts=experts, top_k=top_k, moe_intermediate_size=int(t.moe_intermediate_size),
                    shared_intermediate_size=int(t.moe_intermediate_size) * int(t.n_shared_experts),
                    norm_topk_prob=bool(t.norm_topk_prob), routed_scaling_factor=float(t.routed_scaling_factor))
    if int(t.n_shared_experts) < 1:
        raise ConfigError(f"{source}: text_config.n_shared_experts {t.n_shared_experts}: GLM-4.5V has one shared expert")
    return glm_config(cfg, raw, source, MoeTextConfig, rotary_interleaved=False, sandwich_norms=False,
                      first_k_dense_replace=int(t.first_k_dense_replace), moe=moe,
                      router_aux_loss_coef=float(t.router_aux_loss_coef))
