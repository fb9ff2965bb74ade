"""InternVL3 in the mm layout: the whole model or one pipeline stage, built from an HF config.

State-dict names are mm names (layers numbered from 0 on each stage), so a rank's mm checkpoint
file loads straight into the module. Calling convention, as for every mm family (tensors in and
out, so that ``torch.distributed.pipelining`` can wrap each stage): the first stage is called
``model(**batch)``, a later one ``model(prev_output, **batch)``.

- ``pixel_values`` ``[N_tiles, 3, H, W]``: every tile gives ``(H / patch / 2)**2`` features that
  replace, in order, the ``image_token_id`` tokens of ``input_ids``;
- a stage with unfinished vision blocks returns ViT hidden states ``[N_tiles, 1 + P, C]``; the
  projector's stage without LLM returns the features ``[N_tokens, H]`` (``[0, H]`` without images);
  LLM stages return ``[B, T, H]``; the last returns logits ``[B, T, V]``, or the final-normed hidden
  states with ``return_hidden=True`` (apply ``model.output_weight()`` chunk by chunk for the loss);
- positions restart at 0 for every packed sample of ``segment_ids`` (otherwise ``0..T-1``, like
  transformers' forward without ``position_ids``); ``dummy_vision`` runs the given image through
  the encoder and adds its features times exactly 0, so all data-parallel ranks run the same ops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mm_core.kernels.reference import rotary_cos_sin
from mm_internvl.config import InternVLConfig, parse_config
from mm_internvl.decoder import TextDecoder
from mm_core.layout import StagePlan, stage_plan
from mm_internvl.vision import ImageEncoder


class InternVLModel(nn.Module):
    """One pipeline stage (or the whole model) of InternVL3."""

    def __init__(self, cfg: InternVLConfig, plan: StagePlan, *, device=None, dtype=None):
        super().__init__()
        self.config = cfg
        self.plan = plan
        if plan.has_vision:
            self.image_encoder = ImageEncoder(cfg, plan.vit_count, with_embeddings=plan.patch_embed,
                                              with_projector=plan.projector, device=device, dtype=dtype)
        if plan.has_text:
            self.text_decoder = TextDecoder(cfg.text, plan.llm_count, with_embedding=plan.embedding,
                                            with_head=plan.head, tied=cfg.tie_word_embeddings,
                                            device=device, dtype=dtype)

    def output_weight(self) -> torch.Tensor:
        """The LM head weight ``[V, H]`` (last stage only), for a chunked cross-entropy."""
        if not self.plan.head:
            raise RuntimeError(f"pipeline stage {self.plan.stage} holds no output layer")
        return self.text_decoder.output_weight()

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Random init for models built without a checkpoint (tests, from-scratch runs)."""
        for name, p in self.named_parameters():
            leaf = name.rsplit(".", 2)
            if name.endswith(".bias"):
                p.zero_()
            elif "layernorm" in name or leaf[-2] == "norm":
                p.fill_(1.0)
            elif leaf[-1] in ("ls1", "ls2"):
                p.fill_(self.config.vision.layer_scale_init)
            else:
                p.normal_(0.0, std)

    def forward(
        self,
        *stage_input: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        dummy_vision: torch.Tensor | bool | None = None,
        return_hidden: bool = False,
        **_batch_extras: Any,
    ) -> torch.Tensor:
        prev = stage_input[0] if stage_input else None
        has_images = pixel_values is not None and pixel_values.shape[0] > 0
        features = None
        if self.plan.has_vision:
            if not has_images:
                width = self.config.text.hidden_size if self.plan.projector else self.config.vision.hidden_size
                features = prev if prev is not None else torch.zeros(0, width, device=_device(input_ids))
            else:
                features = self.image_encoder(prev if prev is not None and not self.plan.patch_embed else pixel_values)
            if not self.plan.has_text:
                return features
        elif self.plan.embedding:
            features = prev  # projected features from the stage that ran the projector
        if not self.plan.has_text:  # an empty stage passes its input on (always a tensor)
            return prev if prev is not None else torch.zeros(0, device=_device(input_ids, pixel_values))
        if input_ids is None:
            raise ValueError("input_ids is required by the text decoder stages")
        hidden = self._embed(input_ids, features, dummy_vision) if self.plan.embedding else prev
        seg = segment_ids
        if seg is None and attention_mask is not None:
            seg = torch.where(attention_mask.bool(), 0, -1)
        positions = _positions(input_ids, segment_ids)
        if seg is not None and bool((seg == 0).all()):
            seg = None  # one unpadded sample per row: plain causal attention
        text = self.config.text
        cos, sin = rotary_cos_sin(positions, text.head_dim, text.rope_theta)
        return self.text_decoder(hidden, cos.unsqueeze(1), sin.unsqueeze(1), seg, return_hidden=return_hidden)

    def _embed(self, input_ids: torch.Tensor, features: torch.Tensor | None,
               dummy_vision: torch.Tensor | bool | None) -> torch.Tensor:
        embeds = self.text_decoder.embedding.word_embeddings(input_ids)
        if features is None or features.shape[0] == 0:
            return embeds
        features = features.to(embeds.dtype)
        if dummy_vision is not None and bool(dummy_vision):
            return embeds + features.sum() * 0.0
        mask = input_ids == self.config.image_token_id
        count = int(mask.sum())
        if count != features.shape[0]:
            raise ValueError(f"the batch has {count} image tokens (id {self.config.image_token_id}) but its tiles "
                             f"give {features.shape[0]} features; the processor's tiles and input_ids disagree")
        return embeds.masked_scatter(mask.unsqueeze(-1), features)


def _positions(input_ids: torch.Tensor, segment_ids: torch.Tensor | None) -> torch.Tensor:
    """``[B, T]`` positions: ``0..T-1``, or counted from each packed sample's first token."""
    bsz, seqlen = input_ids.shape
    ar = torch.arange(seqlen, device=input_ids.device).expand(bsz, -1)
    if segment_ids is None:
        return ar
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    first = torch.where(starts, ar, torch.zeros_like(ar)).cummax(dim=1).values
    return ar - first


def _device(*tensors: torch.Tensor | None) -> torch.device | None:
    return next((t.device for t in tensors if t is not None), None)


def build_model(
    hf_config: dict[str, Any] | str | Path,
    *,
    vit_pp_layers=None,
    llm_pp_layers=None,
    pp_rank: int = 0,
    device: str | torch.device = "meta",
    dtype: torch.dtype | None = None,
) -> InternVLModel:
    """Build the whole model, or flattened pipeline stage ``pp_rank`` of the given layout.

    On ``device="meta"`` (the default) nothing is allocated: load a checkpoint with
    ``mm_internvl.loading`` afterwards. On a real device the weights get a small random init.
    """
    cfg = parse_config(hf_config)
    plan = stage_plan(cfg.vision.depth, cfg.text.num_layers, vit_pp_layers, llm_pp_layers, pp_rank)
    model = InternVLModel(cfg, plan, device=device, dtype=dtype)
    if torch.device(device).type != "meta":
        model.init_weights()
    return model
