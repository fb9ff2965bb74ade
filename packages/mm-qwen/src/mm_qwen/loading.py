"""Load Qwen2.5-VL (whole or one pipeline stage) from an HF directory or an mm directory.

- HF dir: each rank streams only the tensors (and slices) it needs through the conversion rules
  (``mm_core.checkpoint.api.hf_to_mm_rank`` with ``Qwen2_5_VLConverter``); no separate conversion step.
- mm dir: each rank reads its own ``mp_rank_*`` file (``mm_core.checkpoint.api.read_mm_rank``).

Tensors are assigned into the meta-built module (no second copy). A DTensor parameter (after the
engine applied ``mm_qwen.parallelize.tp_plan``) receives the rank's local tensor: the mm file *is*
that rank's shard. Missing, unexpected or mis-shaped keys and layout mismatches fail before
anything is assigned, with the command that fixes the checkpoint. The machinery is family-agnostic
and lives in ``mm_core.nn.pretrained``; this module pins the Qwen converter.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mm_core.nn import pretrained
from mm_core.nn.pretrained import is_hf_dir, is_mm_dir
from mm_core.nn.state import CheckpointMismatchError

CONVERTER = "Qwen2_5_VLConverter"

__all__ = ["CONVERTER", "CheckpointMismatchError", "is_hf_dir", "is_mm_dir", "load_hf_weights", "load_mm_weights",
           "load_model"]


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
