"""GLM-4.1V in the mm layout: the whole model or one pipeline stage, built from an HF config.

State-dict names are the reference system's mm names (``reference/mm-format.md``; layers numbered
from 0 on each stage), so a rank's mm checkpoint file loads straight into the module. The stage
routing, the calling convention, the KV cache and the text decoder are mm-core's
(``mm_core.family``; the decoder with its GLM-4 options: interleaved partial rotary and sandwich
norms); this module holds what is GLM's own: the ViT with its merger, images and video frames
sharing one placeholder token, and the 3-D rotary positions.

Batch keys: ``pixel_values`` / ``image_grid_thw`` and ``pixel_values_videos`` / ``video_grid_thw``
(as the HF processor returns them; ``mm_token_type_ids`` is accepted and recomputed from the ids).
A video grid ``(t, h, w)`` runs through the ViT as ``t`` frames ``(1, h, w)``. A stage whose vision
blocks are not finished returns ViT hidden states ``[N_patches, C]``; the merger's stage returns the
features ``[N_patches / 4, hidden]``, images first, then videos.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mm_core.family.stage_model import StageModel, empty_features
from mm_core.layout import StagePlan
from mm_glm.config import GlmConfig, parse_config
from mm_glm.rope_index import IMAGE, VIDEO, mrope_cos_sin_interleaved, mrope_position_ids, token_types
from mm_glm.vision import ImageEncoder


class Glm4vModel(StageModel):
    """One pipeline stage (or the whole model) of GLM-4.1V."""

    supports_sequence_parallel: ClassVar[bool] = True  # the shared decoder: see mm_core.engine.tp_rules

    def __init__(self, cfg: GlmConfig, plan: StagePlan, *, device=None, dtype=None):
        super().__init__(cfg, plan)
        if plan.has_vision:
            self.image_encoder = ImageEncoder(cfg, plan.vit_count, with_stem=plan.patch_embed,
                                              with_projector=plan.projector, device=device, dtype=dtype)
        self.build_text_decoder(cfg.text, cfg.tie_word_embeddings, device=device, dtype=dtype)

    def init_parameter(self, name: str, p: torch.Tensor, std: float) -> None:
        """The merger's LayerNorm (``post_projection_norm``) starts at weight 1 / bias 0 like the RMSNorms."""
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        else:
            super().init_parameter(name, p, std)

    def _types(self, input_ids: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        return token_types(input_ids, image_token_id=cfg.image_token_id,
                           video_start_token_id=cfg.video_start_token_id, video_end_token_id=cfg.video_end_token_id)

    def encode_vision(self, prev: torch.Tensor | None, batch: dict[str, Any],
                      device: torch.device | None) -> torch.Tensor:
        pixels, grids = _media(batch)
        if grids is None:
            vision = self.config.vision
            return empty_features(prev, vision.out_hidden_size if self.plan.projector else vision.hidden_size, device)
        return self.image_encoder(prev, pixels, grids)

    def placeholders(self, features: torch.Tensor, batch: dict[str, Any]) -> list[tuple[str, Any, torch.Tensor]]:
        grid = batch.get("image_grid_thw")
        n_image = int(grid.prod(-1).sum()) // self.config.vision.spatial_merge_size**2 if grid is not None else 0
        return [("image", lambda ids: self._types(ids) == IMAGE, features[:n_image]),
                ("video", lambda ids: self._types(ids) == VIDEO, features[n_image:])]

    def prefill_positions(self, input_ids: torch.Tensor, seg: torch.Tensor | None, batch: dict[str, Any],
                          dummy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        media = {} if dummy else batch  # the dummy image has no tokens
        types = self._types(input_ids) if media else torch.zeros_like(input_ids)
        return mrope_position_ids(input_ids, types, spatial_merge_size=self.config.vision.spatial_merge_size,
                                  image_grid_thw=media.get("image_grid_thw"), video_grid_thw=media.get("video_grid_thw"),
                                  segment_ids=seg)

    def continued_positions(self, pos: torch.Tensor) -> torch.Tensor:
        return pos.unsqueeze(0).expand(3, -1, -1)  # text after the prompt: the same position on t, h, w

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        text = self.config.text
        return mrope_cos_sin_interleaved(positions, text.rotary_dim, text.rope_theta, text.mrope_section)


def _media(batch: dict[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """All images, then every video frame, as one patch sequence with one grid per image or frame."""
    parts = []
    pixels, grid = batch.get("pixel_values"), batch.get("image_grid_thw")
    if pixels is not None and grid is not None and grid.shape[0] > 0:
        parts.append((pixels, grid))
    pixels, grid = batch.get("pixel_values_videos"), batch.get("video_grid_thw")
    if pixels is not None and grid is not None and grid.shape[0] > 0:
        frames = torch.repeat_interleave(grid[:, 1:], grid[:, 0], dim=0)
        parts.append((pixels, torch.cat([torch.ones_like(frames[:, :1]), frames], dim=1)))
    if not parts:
        return None, None
    if len(parts) == 1:
        return parts[0]
    return torch.cat([p for p, _ in parts]), torch.cat([g for _, g in parts])


build_model = Glm4vModel.builder(parse_config)
