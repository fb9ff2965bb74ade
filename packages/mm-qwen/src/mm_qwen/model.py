"""Qwen2.5-VL in the mm layout: the whole model or one pipeline stage, built from an HF config.

State-dict names are the mm names of ``reference/mm-format.md`` (layers numbered from 0 on each
stage), so a rank's mm checkpoint file loads straight into the module.

Calling convention (``model(*stage_input, **batch)``, tensors in and out, so that
``torch.distributed.pipelining`` can wrap each stage; the schedule passes ``batch`` as kwargs to
every stage and the previous stage's output as the positional argument):

- the whole model / first stage: ``model(**batch)``;
- a later stage: ``model(prev_output, **batch)``;
- what a stage returns depends only on the layout: a stage whose vision blocks are not finished
  returns window-ordered ViT hidden states ``[N_patches, vit_hidden]``; the stage holding the
  projector but no LLM returns the merged visual features ``[N_patches / 4, hidden]`` (images then
  videos; ``[0, hidden]`` when the batch has no media); LLM stages return hidden states
  ``[B, T, hidden]``; the last stage returns logits ``[B, T, V]``, or the final-normed hidden states
  when ``return_hidden=True`` (apply ``model.output_weight()`` chunk by chunk for the loss).

Batch keys are those of ``mm_core.batch``; ``labels`` and ``num_samples`` are ignored here (the loss
lives in the engine). ``dummy_vision`` runs the dummy image through the vision encoder and adds
its features with weight exactly 0, so all data-parallel ranks run the same collectives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mm_core.kernels.reference import mrope_cos_sin
from mm_core.nn import KVCache
from mm_qwen.config import QwenVLConfig, parse_config
from mm_qwen.decoder import TextDecoder
from mm_qwen.rope_index import mrope_position_ids
from mm_core.layout import StagePlan, stage_plan
from mm_qwen.vision import ImageEncoder


class Qwen2_5_VLModel(nn.Module):
    """One pipeline stage (or the whole model) of Qwen2.5-VL."""

    def __init__(self, cfg: QwenVLConfig, plan: StagePlan, *, device=None, dtype=None):
        super().__init__()
        self.config = cfg
        self.plan = plan
        if plan.has_vision:
            self.image_encoder = ImageEncoder(cfg.vision, plan.vit_first, plan.vit_count,
                                              with_patch_embed=plan.patch_embed, with_projector=plan.projector,
                                              device=device, dtype=dtype)
        if plan.has_text:
            self.text_decoder = TextDecoder(cfg.text, plan.llm_count, with_embedding=plan.embedding,
                                            with_head=plan.head, tied=cfg.tie_word_embeddings,
                                            device=device, dtype=dtype)

    # -- parameters ------------------------------------------------------------------------------

    def output_weight(self) -> torch.Tensor:
        """The LM head weight ``[V, H]`` (last stage only), for a chunked cross-entropy."""
        if not self.plan.head:
            raise RuntimeError(f"pipeline stage {self.plan.stage} holds no output layer")
        return self.text_decoder.output_weight()

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Random init for models built without a checkpoint (tests, from-scratch runs)."""
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, std)

    # -- forward ---------------------------------------------------------------------------------

    def forward(
        self,
        *stage_input: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        dummy_vision: torch.Tensor | bool | None = None,
        return_hidden: bool = False,
        cache: KVCache | None = None,
        **_batch_extras: Any,
    ) -> torch.Tensor:
        prev = stage_input[0] if stage_input else None
        media, grids = _media(pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw)
        features = None
        if self.plan.has_vision:
            if grids is None:
                width = self.config.vision.out_hidden_size if self.plan.projector else self.config.vision.hidden_size
                features = prev if prev is not None else torch.zeros(0, width, device=_device(input_ids))
            else:
                features = self.image_encoder(prev, media, grids)
            if not self.plan.has_text:
                return features
        elif self.plan.embedding:
            features = prev  # merged visual features from the stage that ran the projector
        if not self.plan.has_text:  # an empty stage passes its input on (always a tensor)
            return prev if prev is not None else torch.zeros(0, device=_device(input_ids, pixel_values))
        if input_ids is None:
            raise ValueError("input_ids is required by the text decoder stages")
        if self.plan.embedding:
            hidden = self._embed(input_ids, features, image_grid_thw, dummy_vision)
        else:
            hidden = prev
        if dummy_vision is not None and bool(dummy_vision):  # the dummy image has no tokens
            image_grid_thw = video_grid_thw = second_per_grid_ts = None
        return self._decode(hidden, input_ids, attention_mask, segment_ids, image_grid_thw, video_grid_thw,
                            second_per_grid_ts, cache, return_hidden)

    def _embed(self, input_ids: torch.Tensor, features: torch.Tensor | None, image_grid_thw: torch.Tensor | None,
               dummy_vision: torch.Tensor | bool | None) -> torch.Tensor:
        embeds = self.text_decoder.embedding.word_embeddings(input_ids)
        if features is None or features.shape[0] == 0:
            return embeds
        features = features.to(embeds.dtype)
        if dummy_vision is not None and bool(dummy_vision):
            return embeds + features.sum() * 0.0
        merge = self.config.vision.spatial_merge_size ** 2
        n_image = int(image_grid_thw.prod(-1).sum()) // merge if image_grid_thw is not None else 0
        for token, feats, kind in ((self.config.image_token_id, features[:n_image], "image"),
                                   (self.config.video_token_id, features[n_image:], "video")):
            mask = input_ids == token
            count = int(mask.sum())
            if count != feats.shape[0]:
                raise ValueError(
                    f"the batch has {count} {kind} placeholder tokens (id {token}) but its {kind} grids "
                    f"give {feats.shape[0]} features; the processor's grids and input_ids disagree"
                )
            if count:
                embeds = embeds.masked_scatter(mask.unsqueeze(-1), feats)
        return embeds

    def _decode(self, hidden, input_ids, attention_mask, segment_ids, image_grid_thw, video_grid_thw,
                second_per_grid_ts, cache, return_hidden) -> torch.Tensor:
        bsz, seqlen = input_ids.shape
        seg = segment_ids
        if seg is None and attention_mask is not None:
            seg = torch.where(attention_mask.bool(), 0, -1)
        cfg = self.config
        if cache is not None and cache.seen_tokens > 0:
            pos = cache.next_positions[:, None] + torch.arange(seqlen, device=input_ids.device)
            pos3 = pos.unsqueeze(0).expand(3, -1, -1)
            cache.next_positions = cache.next_positions + seqlen
        else:
            pos3, next_pos = mrope_position_ids(
                input_ids, image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
                spatial_merge_size=cfg.vision.spatial_merge_size, tokens_per_second=cfg.vision.tokens_per_second,
                image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw,
                second_per_grid_ts=second_per_grid_ts, segment_ids=seg,
            )
            if cache is not None:
                cache.next_positions = next_pos
        if cache is not None:
            seg = cache.extend_segments(seg if seg is not None else torch.zeros_like(input_ids))
        elif seg is not None and bool((seg == 0).all()):
            seg = None  # one unpadded sample per row: plain causal attention
        text = cfg.text
        cos, sin = mrope_cos_sin(pos3, text.head_dim, text.rope_theta, list(text.mrope_section))
        return self.text_decoder(hidden, cos.unsqueeze(1), sin.unsqueeze(1), seg, cache,
                                 return_hidden=return_hidden)


def _device(*tensors: torch.Tensor | None) -> torch.device | None:
    return next((t.device for t in tensors if t is not None), None)


def _media(pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw):
    """All images then all videos as one patch sequence (the ViT attends within frames only)."""
    parts = [(p, g) for p, g in ((pixel_values, image_grid_thw), (pixel_values_videos, video_grid_thw))
             if p is not None and g is not None and g.shape[0] > 0]
    if not parts:
        return None, None
    if len(parts) == 1:
        return parts[0]
    return torch.cat([p for p, _ in parts]), torch.cat([g for _, g in parts])


def build_model(
    hf_config: dict[str, Any] | str | Path,
    *,
    vit_pp_layers=None,
    llm_pp_layers=None,
    pp_rank: int = 0,
    device: str | torch.device = "meta",
    dtype: torch.dtype | None = None,
) -> Qwen2_5_VLModel:
    """Build the whole model, or flattened pipeline stage ``pp_rank`` of the given layout.

    On ``device="meta"`` (the default) nothing is allocated: load a checkpoint with
    ``mm_qwen.loading`` afterwards. On a real device the weights get a small random init.
    """
    cfg = parse_config(hf_config)
    plan = stage_plan(cfg.vision.depth, cfg.text.num_layers, vit_pp_layers, llm_pp_layers, pp_rank)
    model = Qwen2_5_VLModel(cfg, plan, device=device, dtype=dtype)
    if torch.device(device).type != "meta":
        model.init_weights()
    return model
