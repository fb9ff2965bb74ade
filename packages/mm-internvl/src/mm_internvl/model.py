"""InternVL3 in the mm layout: the whole model or one pipeline stage, built from an HF config.

State-dict names are mm names (layers numbered from 0 on each stage), so a rank's mm checkpoint
file loads straight into the module. The stage routing, the calling convention, the KV cache and
the Qwen2 text decoder are mm-core's (``mm_core.family``); this module holds what is InternVL's
own: the InternViT tiles with pixel shuffle and projector, and 1-D rotary positions.

- ``pixel_values`` ``[N_tiles, 3, H, W]``: every tile gives ``(H / patch / 2)**2`` features that
  replace, in order, the ``image_token_id`` tokens of ``input_ids``;
- a stage with unfinished vision blocks returns ViT hidden states ``[N_tiles, 1 + P, C]``; the
  projector's stage without LLM returns the features ``[N_tokens, H]`` (``[0, H]`` without images);
- positions count from each sample's first token: packed samples of ``segment_ids`` restart at 0,
  and so does a left-padded row (like transformers' generation); a right-padded or unpadded row
  runs ``0..T-1`` (transformers' forward without ``position_ids``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mm_core.errors import ConfigError
from mm_core.family.stage_model import StageModel, empty_features
from mm_core.kernels.reference import rotary_cos_sin
from mm_core.layout import StagePlan
from mm_internvl.config import InternVLConfig, parse_config
from mm_internvl.vision import ImageEncoder


class InternVLModel(StageModel):
    """One pipeline stage (or the whole model) of InternVL3."""

    supports_sequence_parallel: ClassVar[bool] = True  # the shared decoder: see mm_core.engine.tp_rules

    def __init__(self, cfg: InternVLConfig, plan: StagePlan, *, device=None, dtype=None):
        super().__init__(cfg, plan)
        if plan.has_vision:
            self.image_encoder = ImageEncoder(cfg, plan.vit_count, with_embeddings=plan.patch_embed,
                                              with_projector=plan.projector, device=device, dtype=dtype)
        self.build_text_decoder(cfg.text, cfg.tie_word_embeddings, device=device, dtype=dtype)

    def init_parameter(self, name: str, p: torch.Tensor, std: float) -> None:
        """InternViT adds ``norm`` modules (layer or RMS) and layer scales ``ls1``/``ls2``."""
        leaf = name.rsplit(".", 2)
        if name.endswith(".bias"):
            p.zero_()
        elif "layernorm" in name or leaf[-2] == "norm":
            p.fill_(1.0)
        elif leaf[-1] in ("ls1", "ls2"):
            p.fill_(self.config.vision.layer_scale_init)
        else:
            p.normal_(0.0, std)

    def encode_vision(self, prev: torch.Tensor | None, batch: dict[str, Any],
                      device: torch.device | None) -> torch.Tensor:
        pixel_values = batch.get("pixel_values")
        if pixel_values is None or pixel_values.shape[0] == 0:
            width = self.config.text.hidden_size if self.plan.projector else self.config.vision.hidden_size
            return empty_features(prev, width, device)
        return self.image_encoder(prev if prev is not None and not self.plan.patch_embed else pixel_values)

    def placeholders(self, features: torch.Tensor, batch: dict[str, Any]
                     ) -> list[tuple[str, int, torch.Tensor]]:
        return [("image", self.config.image_token_id, features)]

    def prefill_positions(self, input_ids: torch.Tensor, seg: torch.Tensor | None, batch: dict[str, Any],
                          dummy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        positions = _positions(input_ids, seg)
        return positions, positions[:, -1] + 1

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        text, limit = self.config.text, self.config.rope_limit
        if limit is not None and positions.numel() and int(positions.max()) >= limit:
            raise ConfigError(f"position {int(positions.max())} reaches text_config.max_position_embeddings {limit}, "
                              f"where the config's rope_type 'dynamic' would rescale the rotary (not implemented); "
                              f"keep sequences shorter than {limit}")
        return rotary_cos_sin(positions, text.head_dim, text.rope_theta)


def _positions(input_ids: torch.Tensor, segment_ids: torch.Tensor | None) -> torch.Tensor:
    """``[B, T]`` positions: ``0..T-1``, or counted from each segment's first token."""
    bsz, seqlen = input_ids.shape
    ar = torch.arange(seqlen, device=input_ids.device).expand(bsz, -1)
    if segment_ids is None:
        return ar
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    first = torch.where(starts, ar, torch.zeros_like(ar)).cummax(dim=1).values
    return ar - first


build_model = InternVLModel.builder(parse_config)
