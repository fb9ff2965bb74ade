"""VisualGLM-6B in the mm layout: the whole model or one pipeline stage, built from its config.

Stage routing, the calling convention and the KV cache are mm-core's (``mm_core.family.stage_model``);
what is VisualGLM's own: the image encoder (EVA ViT + Q-Former + ``glm_proj``, ``vision.py``), ChatGLM-6B
(``text.py``), its 2-D positions and prefix-LM context (``positions.py``), and the 32 image features
replacing the placeholder ids between ``<img>`` and ``</img>`` (one run of ``image_length`` placeholders
per image, in order).

Batch keys: ``input_ids``, ``attention_mask`` / ``segment_ids``, ``pixel_values`` ``[N_images, 3, 224, 224]``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mm_core.family.stage_model import StageModel, empty_features
from mm_core.kernels.reference import rotary_cos_sin
from mm_core.layout import StagePlan
from mm_core.nn import KVCache
from mm_visualglm.config import VisualGLMConfig, parse_config
from mm_visualglm.positions import glm_positions
from mm_visualglm.text import ChatGLMDecoder
from mm_visualglm.vision import ImageEncoder


class VisualGLMModel(StageModel):
    """One pipeline stage (or the whole model) of VisualGLM-6B."""

    supports_sequence_parallel: ClassVar[bool] = False

    def __init__(self, cfg: VisualGLMConfig, plan: StagePlan, *, device=None, dtype=None):
        super().__init__(cfg, plan)
        if plan.has_vision:
            self.image_encoder = ImageEncoder(cfg, plan.vit_count, with_stem=plan.patch_embed,
                                              with_projector=plan.projector, device=device, dtype=dtype)
        if plan.has_text:
            self.text_decoder = ChatGLMDecoder(cfg.text, plan.llm_count, with_embedding=plan.embedding,
                                               with_head=plan.head, device=device, dtype=dtype)
        self._real: torch.Tensor | None = None

    def init_parameter(self, name: str, p: torch.Tensor, std: float) -> None:
        """LayerNorms (``*layernorm*``, ``ln_vision``) start at weight 1 like the base's norms."""
        if name.endswith(("layernorm.weight", "ln_vision.weight")):
            p.fill_(1.0)
        else:
            super().init_parameter(name, p, std)

    def forward(self, *stage_input: torch.Tensor, **batch: Any) -> torch.Tensor:
        seg, mask = batch.get("segment_ids"), batch.get("attention_mask")
        # placeholders are <unk> ids: a batch padded with id 0 (the synthetic source) must not count its padding
        self._real = (seg >= 0) if seg is not None else mask.bool() if mask is not None else None
        try:
            out = super().forward(*stage_input, **batch)
        finally:
            self._real = None
            if hasattr(self, "text_decoder"):
                self.text_decoder._context = None
        return out

    # -- family hooks ----------------------------------------------------------------------------

    def encode_vision(self, prev: torch.Tensor | None, batch: dict[str, Any],
                      device: torch.device | None) -> torch.Tensor:
        pixels = batch.get("pixel_values")
        if prev is None and (pixels is None or pixels.shape[0] == 0):
            width = self.config.text.hidden_size if self.plan.projector else self.config.vision.hidden_size
            return empty_features(None, width, device)
        return self.image_encoder(pixels if prev is None else prev)

    def placeholders(self, features: torch.Tensor, batch: dict[str, Any]) -> list[tuple[str, Any, torch.Tensor]]:
        token, real = self.config.image_token_id, self._real
        if real is None:
            return [("image", token, features)]
        return [("image", lambda ids: (ids == token) & real[:, -ids.shape[1]:], features)]

    def _rotary(self, input_ids: torch.Tensor, seg: torch.Tensor | None, cache: KVCache | None,
                batch: dict[str, Any], dummy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """2-D positions: from the prompt (and its ``<sop>``), or continued from the cache, whose
        ``next_positions`` row is ``[next position, next block, position step, block step]``."""
        t = input_ids.shape[1]
        if cache is not None and cache.seen_tokens > 0:
            state = cache.next_positions
            steps = torch.arange(t, device=input_ids.device)
            positions = torch.stack([state[:, 0, None] + state[:, 2, None] * steps,
                                     state[:, 1, None] + state[:, 3, None] * steps])
            cache.next_positions = torch.cat([state[:, :2] + state[:, 2:] * t, state[:, 2:]], dim=1)
            context = torch.zeros_like(input_ids, dtype=torch.bool)
        else:
            cfg = self.config
            positions, context, nxt, step = glm_positions(
                input_ids, seg, bos_token_id=cfg.bos_token_id, mask_token_ids=(cfg.gmask_token_id, cfg.mask_token_id))
            if cache is not None:
                cache.next_positions = torch.cat([nxt, step]).t()
        self.text_decoder._context = context
        return self.rotary(positions)

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, T, head_dim]``: the position half's table, then the block-position half's."""
        dim = self.config.text.rotary_dim
        cp, sp = rotary_cos_sin(positions[0], dim, 10000.0)
        cb, sb = rotary_cos_sin(positions[1], dim, 10000.0)
        return torch.cat([cp, cb], dim=-1), torch.cat([sp, sb], dim=-1)


build_model = VisualGLMModel.builder(parse_config)
