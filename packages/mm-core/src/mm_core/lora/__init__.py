"""LoRA for every family: low-rank adapters on mm modules chosen by name and layer.

The base model keeps its parameter names (loading, converters, tp plans and FSDP2 see nothing
new); each targeted Linear gains ``lora_A.<s>`` / ``lora_B.<s>`` parameters, one pair per row
section of a fused weight (q, k, v of ``linear_qkv``; gate, up of a gated ``linear_fc1``), and a
forward hook that adds ``scaling * B_s A_s x`` to that section's rows.
"""

from mm_core.lora.config import LoraConfig

__all__ = ["LoraConfig"]
