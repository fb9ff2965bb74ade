"""The stage routing every vision-language family shares: one pipeline stage (or the whole model)
holding some vision layers, the projector, some LLM layers and the head, in that order.

Calling convention (``model(*stage_input, **batch)``, tensors in and out, so that
``torch.distributed.pipelining`` can wrap each stage; the schedule passes ``batch`` as kwargs to
every stage and the previous stage's output as the positional argument):

- a stage whose vision blocks are not finished returns the encoder's hidden states; the stage
  holding the projector but no LLM returns the visual features ``[N, H]`` (``[0, H]`` without
  media); LLM stages return hidden states ``[B, T, H]``; the last stage returns logits
  ``[B, T, V]``, or the final-normed hidden states with ``return_hidden=True`` (apply
  ``output_weight()`` chunk by chunk for the loss);
- ``dummy_vision`` runs the dummy media through the encoder and adds its features times exactly
  0, so all data-parallel ranks run the same collectives;
- with ``cache`` (a :class:`~mm_core.nn.KVCache`), keys/values, padding and the next rotary
  positions are kept for the next call, and positions continue from the cache.

A family subclasses :class:`StageModel` and implements the four hooks at the bottom (vision,
placeholders, prefill positions, rotary); ``labels`` and other batch keys it does not read are
ignored (the loss lives in the engine).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from mm_core.family.decoder import DecoderConfig, TextDecoder
from mm_core.layout import StagePlan, stage_plan
from mm_core.nn import KVCache


class StageModel(nn.Module):
    """Base of a family's stage model; satisfies :class:`mm_core.contracts.StageModel`."""

    supports_sequence_parallel: ClassVar[bool] = False

    def __init__(self, config: Any, plan: StagePlan):
        super().__init__()
        self.config = config
        self.plan = plan

    @classmethod
    def build(cls, config: Any, vision_layers: int, text_layers: int, *, vit_pp_layers: Any = None,
              llm_pp_layers: Any = None, pp_rank: int = 0, device: str | torch.device = "meta",
              dtype: torch.dtype | None = None) -> StageModel:
        """The whole model, or flattened pipeline stage ``pp_rank`` of the layer lists' layout.

        On ``device="meta"`` nothing is allocated (load a checkpoint with ``mm_core.nn.pretrained``
        afterwards); on a real device the weights get a small random init.
        """
        plan = stage_plan(vision_layers, text_layers, vit_pp_layers, llm_pp_layers, pp_rank)
        model = cls(config, plan, device=device, dtype=dtype)
        if torch.device(device).type != "meta":
            model.init_weights()
        return model

    @classmethod
    def builder(cls, parse_config: Callable[[Any], Any]) -> Callable[..., StageModel]:
        """The family's ``build_model(hf_config, *, vit_pp_layers, llm_pp_layers, pp_rank, device, dtype)``
        (the ``ModelSpec.builder``): parse the HF config, then ``build`` from its ``vision.depth`` and
        ``text.num_layers``."""

        def build_model(hf_config: Any, *, vit_pp_layers: Any = None, llm_pp_layers: Any = None, pp_rank: int = 0,
                        device: str | torch.device = "meta", dtype: torch.dtype | None = None) -> StageModel:
            cfg = parse_config(hf_config)
            return cls.build(cfg, cfg.vision.depth, cfg.text.num_layers, vit_pp_layers=vit_pp_layers,
                             llm_pp_layers=llm_pp_layers, pp_rank=pp_rank, device=device, dtype=dtype)

        build_model.__doc__ = f"Build {cls.__name__}: the whole model or one pipeline stage (meta by default)."
        return build_model

    def build_text_decoder(self, text: DecoderConfig, tied: bool, *, device=None, dtype=None) -> None:
        """The shared decoder for this stage's LLM layers (when it has any)."""
        if self.plan.has_text:
            self.text_decoder = TextDecoder(text, self.plan.llm_count, with_embedding=self.plan.embedding,
                                            with_head=self.plan.head, tied=tied, device=device, dtype=dtype)

    # -- parameters ------------------------------------------------------------------------------

    def output_weight(self) -> torch.Tensor:
        """The LM head weight ``[V, H]`` (last stage only), for a chunked cross-entropy."""
        if not self.plan.head:
            raise RuntimeError(f"pipeline stage {self.plan.stage} holds no output layer")
        return self.text_decoder.output_weight()

    def aux_losses(self) -> list[torch.Tensor]:
        """Auxiliary losses of the last forward (router balance of MoE layers); dense: none."""
        return []

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Random init for models built without a checkpoint (tests, from-scratch runs)."""
        for name, p in self.named_parameters():
            self.init_parameter(name, p, std)

    def init_parameter(self, name: str, p: torch.Tensor, std: float) -> None:
        """Norm weights 1, biases 0, the rest N(0, std); a family overrides for its own kinds."""
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
        dummy_vision: torch.Tensor | bool | None = None,
        return_hidden: bool = False,
        cache: KVCache | None = None,
        **batch: Any,
    ) -> torch.Tensor:
        prev = stage_input[0] if stage_input else None
        features = None
        if self.plan.has_vision:
            features = self.encode_vision(prev, batch, _device(input_ids))
            if not self.plan.has_text:
                return features
        elif self.plan.embedding:
            features = prev  # the visual features from the stage that ran the projector
        if not self.plan.has_text:  # an empty stage passes its input on (always a tensor)
            tensors = [t for t in batch.values() if isinstance(t, torch.Tensor)]
            return prev if prev is not None else torch.zeros(0, device=_device(input_ids, *tensors))
        if input_ids is None:
            raise ValueError("input_ids is required by the text decoder stages")
        dummy = dummy_vision is not None and bool(dummy_vision)
        hidden = self._embed(input_ids, features, dummy, batch) if self.plan.embedding else prev
        seg = segment_ids
        if seg is None and attention_mask is not None:
            seg = torch.where(attention_mask.bool(), 0, -1)
        cos, sin = self._rotary(input_ids, seg, cache, batch, dummy)
        if cache is not None:
            seg = cache.extend_segments(seg if seg is not None else torch.zeros_like(input_ids))
        elif seg is not None and bool((seg == 0).all()):
            seg = None  # one unpadded sample per row: plain causal attention
        # positional (hidden, cos, sin, segment_ids, cache): what tensor-parallel plans prepare
        return self.text_decoder(hidden, cos.unsqueeze(1), sin.unsqueeze(1), seg, cache,
                                 return_hidden=return_hidden)

    def _embed(self, input_ids: torch.Tensor, features: torch.Tensor | None, dummy: bool,
               batch: dict[str, Any]) -> torch.Tensor:
        embeds = self.text_decoder.embedding.word_embeddings(input_ids)
        if features is None or features.shape[0] == 0:
            return embeds
        features = features.to(embeds.dtype)
        if dummy:
            return embeds + features.sum() * 0.0
        for kind, token, feats in self.placeholders(features, batch):
            mask = token(input_ids) if callable(token) else input_ids == token
            count = int(mask.sum())
            if count != feats.shape[0]:
                what = "" if callable(token) else f" (id {token})"
                raise ValueError(
                    f"the batch has {count} {kind} placeholder tokens{what} but its {kind} inputs give "
                    f"{feats.shape[0]} features; the processor's {kind} inputs and input_ids disagree")
            if count:
                embeds = embeds.masked_scatter(mask.unsqueeze(-1), feats)
        return embeds

    def _rotary(self, input_ids: torch.Tensor, seg: torch.Tensor | None, cache: KVCache | None,
                batch: dict[str, Any], dummy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (continued from the cache when it holds tokens) -> ``(cos, sin)``."""
        if cache is not None and cache.seen_tokens > 0:
            pos = cache.next_positions[:, None] + torch.arange(input_ids.shape[1], device=input_ids.device)
            cache.next_positions = cache.next_positions + input_ids.shape[1]
            positions = self.continued_positions(pos)
        else:
            positions, next_positions = self.prefill_positions(input_ids, seg, batch, dummy)
            if cache is not None:
                cache.next_positions = next_positions
        return self.rotary(positions)

    # -- family hooks ----------------------------------------------------------------------------

    def encode_vision(self, prev: torch.Tensor | None, batch: dict[str, Any],
                      device: torch.device | None) -> torch.Tensor:
        """This stage's vision work on the batch's media (``prev``: the previous stage's output);
        ``[0, width]`` (or ``prev`` passed on) when the batch has none."""
        raise NotImplementedError

    def placeholders(self, features: torch.Tensor, batch: dict[str, Any]
                     ) -> list[tuple[str, int | Callable[[torch.Tensor], torch.Tensor], torch.Tensor]]:
        """``(kind, placeholder token id, its features)`` in the order the features come. Where two kinds
        share one token id (GLM: video frames are image tokens), give instead of the id a function of
        ``input_ids`` returning the boolean mask of this kind's placeholders."""
        raise NotImplementedError

    def prefill_positions(self, input_ids: torch.Tensor, seg: torch.Tensor | None, batch: dict[str, Any],
                          dummy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary positions of a fresh sequence and each row's next position ``[B]``."""
        raise NotImplementedError

    def continued_positions(self, pos: torch.Tensor) -> torch.Tensor:
        """Positions for tokens after the cache, from their ``[B, T]`` indices (1-D rotary: as is)."""
        return pos

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)`` ``[B, T, head_dim]`` of the positions."""
        raise NotImplementedError


def _device(*tensors: torch.Tensor | None) -> torch.device | None:
    return next((t.device for t in tensors if t is not None), None)


def empty_features(prev: torch.Tensor | None, width: int, device: torch.device | None) -> torch.Tensor:
    """What a vision stage returns for a batch without media: ``prev`` passed on, else ``[0, width]``."""
    return prev if prev is not None else torch.zeros(0, width, device=device)
