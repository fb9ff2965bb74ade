"""Load InternVL3 (whole or one pipeline stage) from an HF directory or an mm directory.

The HF path streams each rank's tensors through ``InternVLConverter`` (no separate conversion
step); the mm path reads the rank's own ``mp_rank_*`` file. The machinery is family-agnostic and
lives in ``mm_core.nn.pretrained``; this module pins the converter.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mm_core.nn import pretrained

CONVERTER = "InternVLConverter"


def load_hf_weights(model: nn.Module, hf_dir: str | Path, **layout: Any) -> None:
    """This rank's share of an HF checkpoint (``tp_size``, ``tp_rank``, ``*_pp_layers``, ``pp_rank``)."""
    pretrained.load_hf_weights(model, hf_dir, CONVERTER, **layout)


def load_mm_weights(model: nn.Module, mm_dir: str | Path, **layout: Any) -> None:
    """This rank's ``mp_rank`` file of an mm checkpoint (same layout keywords, plus ``iteration``)."""
    pretrained.load_mm_weights(model, mm_dir, CONVERTER, **layout)


def load_model(path: str | Path, *, hf_config: Any = None, tp_size: int = 1, tp_rank: int = 0,
               vit_pp_layers: Sequence | None = None, llm_pp_layers: Sequence | None = None, pp_rank: int = 0,
               device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
               iteration: int | str | None = None) -> nn.Module:
    """Build on meta and load a model or one stage; an mm dir without config.json needs ``hf_config``."""
    return pretrained.load_pretrained(path, hf_config=hf_config, tp_size=tp_size, tp_rank=tp_rank,
                                      vit_pp_layers=vit_pp_layers, llm_pp_layers=llm_pp_layers, pp_rank=pp_rank,
                                      device=device, dtype=dtype, iteration=iteration)
