"""GLM-4.5V's text rules (``GlmConverter`` picks them for ``model_type`` ``glm4v_moe``).

- Attention, norms, embedding and head: the shared decoder's rules (q/k/v with biases, no sandwich
  norms); the dense MLP (separate ``gate_proj``/``up_proj`` on the Hub) only on the layers before
  ``first_k_dense_replace``.
- MoE layers: ``mlp.gate.weight`` -> ``mlp.router.weight``; ``mlp.gate.e_score_correction_bias``
  -> ``mlp.router.expert_bias`` (kept fp32); the per-expert Hub tensors stacked into
  ``mlp.experts.weight1`` ``[E, H, 2I]`` / ``weight2`` ``[E, I, H]`` (``mm_core.checkpoint.expert_ops``);
  the shared expert as the decoder's SwiGLU MLP (``[gate; up]`` fused). The two stacks are declared
  stacks (``Transform.blocks``), so every verb moves them a block of experts at a time
  (``--cfg.block_mb`` / ``--block_mb``, ``mm_convert.stacks``): GLM-4.5V's 2.95 GB a layer never
  exists whole in memory.

Tensor parallel: attention and the shared expert split as the decoder's rules say (heads in
whole GQA groups, gated column / row); router and routed experts are replicated on every tp rank
(each rank routes the same tokens and runs every expert, so no communication is added; expert
parallelism, not tp, is what divides the experts' memory).
"""

from __future__ import annotations

import dataclasses

from mm_core.checkpoint.expert_ops import StackDown, StackGateUp
from mm_core.checkpoint.ops import GATED_COLUMN, ROW, Concat
from mm_core.checkpoint.rules import Rule
from mm_core.family.decoder_rules import LAYER, decoder_rules, layer_rules
from mm_glm.convert import EMBED, HF_LLM
from mm_glm.moe_config import MoeTextConfig


def moe_text_rules(t: MoeTextConfig) -> list[Rule]:
    """The text decoder of GLM-4.5V: dense layers ``[0, first_k_dense_replace)``, MoE after."""
    assert t.moe is not None
    dense = (0, t.first_k_dense_replace)
    rules = [dataclasses.replace(r, layers=dense) if ".mlp." in r.mm else r
             for r in decoder_rules(heads=t.num_heads, kv_heads=t.num_kv_heads, head_dim=t.head_dim, hf_layer=HF_LLM,
                                    hf_embedding=EMBED, hf_final_norm="model.language_model.norm.weight",
                                    hf_lm_head="lm_head.weight")]
    llm = layer_rules(LAYER, HF_LLM, "llm")
    moe = (t.first_k_dense_replace, None)
    experts = range(t.moe.num_experts)
    gate_up = tuple(f"mlp.experts.{e}.{p}_proj.weight" for e in experts for p in ("gate", "up"))
    down = tuple(f"mlp.experts.{e}.down_proj.weight" for e in experts)
    return rules + [
        llm("mlp.router.weight", "mlp.gate.weight", layers=moe),
        llm("mlp.router.expert_bias", "mlp.gate.e_score_correction_bias", layers=moe),
        llm("mlp.experts.weight1", gate_up, op=StackGateUp(t.moe.num_experts), layers=moe),
        llm("mlp.experts.weight2", down, op=StackDown(t.moe.num_experts), layers=moe),
        llm("mlp.shared_experts.linear_fc1.weight", ("mlp.shared_experts.gate_proj.weight",
                                                     "mlp.shared_experts.up_proj.weight"),
            op=Concat(parts=2), tp=GATED_COLUMN, layers=moe),
        llm("mlp.shared_experts.linear_fc2.weight", "mlp.shared_experts.down_proj.weight", tp=ROW, layers=moe),
    ]
