"""The example family's model: the toy vision-language model of mm_core.testing.

Replace this with your architecture. What the rest of mm relies on is the builder's signature
(``build_model(hf_config, *, vit_pp_layers, llm_pp_layers, pp_rank, device, dtype)``, one
pipeline stage or the whole model), mm parameter names and the stage calling convention
(``stage(prev_output, **batch)``); the toy model documents all three.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mm_core.testing.toy_model import DEFAULT_CONFIG
from mm_core.testing.toy_model import build_model as build_toy

MODEL_TYPE = "example_vl"


def build_model(hf_config: dict[str, Any] | str | Path, *, vit_pp_layers: list[Any] | None = None,
                llm_pp_layers: list[Any] | None = None, pp_rank: int = 0, device: str | torch.device = "meta",
                dtype: torch.dtype | None = None) -> nn.Module:
    """One flattened pipeline stage (the whole model without layer lists); random weights off meta."""
    return build_toy(hf_config, vit_pp_layers=vit_pp_layers, llm_pp_layers=llm_pp_layers, pp_rank=pp_rank,
                     device=device, dtype=dtype)


def tiny_config(**overrides: Any) -> dict[str, Any]:
    """The HF ``config.json`` of a tiny example model (2 vision + 2 LLM layers)."""
    return {**DEFAULT_CONFIG, "model_type": MODEL_TYPE, "architectures": ["ExampleVLForConditionalGeneration"],
            **overrides}
