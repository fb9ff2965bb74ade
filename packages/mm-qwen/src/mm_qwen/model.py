"""Qwen2.5-VL in the mm layout: the whole model or one pipeline stage, built from an HF config.

State-dict names are the mm names of ``reference/mm-format.md`` (layers numbered from 0 on each
stage), so a rank's mm checkpoint file loads straight into the module. The stage routing, the
calling convention and the text decoder are mm-core's (``mm_core.family``); this module holds what
is Qwen's own: the window-attention ViT with its patch merger, images and videos as one patch
sequence, and the multimodal rotary (positions from the image/video grids).

Batch keys are those of ``mm_core.batch``: ``pixel_values`` / ``image_grid_thw`` and
``pixel_values_videos`` / ``video_grid_thw`` / ``second_per_grid_ts``. A stage whose vision blocks
are not finished returns window-ordered ViT hidden states ``[N_patches, vit_hidden]``; the
projector's stage returns the merged features ``[N_patches / 4, hidden]`` (images then videos).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mm_core.family.stage_model import StageModel, empty_features
from mm_core.kernels.reference import mrope_cos_sin
from mm_core.layout import StagePlan
from mm_qwen.config import QwenVLConfig, parse_config
from mm_qwen.rope_index import mrope_position_ids
from mm_qwen.vision import ImageEncoder


class Qwen2_5_VLModel(StageModel):
    """One pipeline stage (or the whole model) of Qwen2.5-VL."""

    supports_sequence_parallel: ClassVar[bool] = True  # the shared decoder: see mm_core.engine.tp_rules

    def __init__(self, cfg: QwenVLConfig, plan: StagePlan, *, device=None, dtype=None):
        super().__init__(cfg, plan)
        if plan.has_vision:
            self.image_encoder = ImageEncoder(cfg.vision, plan.vit_first, plan.vit_count,
                                              with_patch_embed=plan.patch_embed, with_projector=plan.projector,
                                              device=device, dtype=dtype)
        self.build_text_decoder(cfg.text, cfg.tie_word_embeddings, device=device, dtype=dtype)

    def encode_vision(self, prev: torch.Tensor | None, batch: dict[str, Any],
                      device: torch.device | None) -> torch.Tensor:
        media, grids = _media(batch.get("pixel_values"), batch.get("image_grid_thw"),
                              batch.get("pixel_values_videos"), batch.get("video_grid_thw"))
        if grids is None:
            vision = self.config.vision
            return empty_features(prev, vision.out_hidden_size if self.plan.projector else vision.hidden_size, device)
        return self.image_encoder(prev, media, grids)

    def placeholders(self, features: torch.Tensor, batch: dict[str, Any]
                     ) -> list[tuple[str, int, torch.Tensor]]:
        grid = batch.get("image_grid_thw")
        n_image = int(grid.prod(-1).sum()) // self.config.vision.spatial_merge_size ** 2 if grid is not None else 0
        return [("image", self.config.image_token_id, features[:n_image]),
                ("video", self.config.video_token_id, features[n_image:])]

    def prefill_positions(self, input_ids: torch.Tensor, seg: torch.Tensor | None, batch: dict[str, Any],
                          dummy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        media = {} if dummy else batch  # the dummy image has no tokens
        return mrope_position_ids(
            input_ids, image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
            spatial_merge_size=cfg.vision.spatial_merge_size, tokens_per_second=cfg.vision.tokens_per_second,
            image_grid_thw=media.get("image_grid_thw"), video_grid_thw=media.get("video_grid_thw"),
            second_per_grid_ts=media.get("second_per_grid_ts"), segment_ids=seg,
        )

    def continued_positions(self, pos: torch.Tensor) -> torch.Tensor:
        return pos.unsqueeze(0).expand(3, -1, -1)  # text after the prompt: the same position on t, h, w

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        text = self.config.text
        return mrope_cos_sin(positions, text.head_dim, text.rope_theta, list(text.mrope_section))


def _media(pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw):
    """All images then all videos as one patch sequence (the ViT attends within frames only)."""
    parts = [(p, g) for p, g in ((pixel_values, image_grid_thw), (pixel_values_videos, video_grid_thw))
             if p is not None and g is not None and g.shape[0] > 0]
    if not parts:
        return None, None
    if len(parts) == 1:
        return parts[0]
    return torch.cat([p for p, _ in parts]), torch.cat([g for _, g in parts])


build_model = Qwen2_5_VLModel.builder(parse_config)
