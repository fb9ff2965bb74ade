"""GLM-4.5V (``glm4v_moe``) in the mm layout: GLM-4.1V's stage model with MoE decoder layers.

Everything but the text layers' MLPs is GLM-4.1V's (vision tower, merger, placeholders, 3-D
positions). The text decoder is mm-core's shared one without sandwich norms and with rotate-half
partial rotary (transformers' ``Glm4vMoeTextAttention``: ``[freq, freq]`` tables cut into the
mRoPE sections, unlike GLM-4.1V's interleaved pairs). Layers before ``first_k_dense_replace`` keep
the dense SwiGLU MLP; the others get :class:`mm_glm.moe.MoeMLP` as their ``mlp``.
"""

from __future__ import annotations

from typing import Any

import torch

from mm_core.kernels.reference import mrope_cos_sin
from mm_core.layout import StagePlan
from mm_glm.config import GlmConfig
from mm_glm.model import Glm4vModel
from mm_glm.moe import MoeMLP
from mm_glm.moe_aux import balance_loss, pack_stats, router_sums, unpack_stats
from mm_glm.moe_config import MoeTextConfig, parse_moe_config


class Glm4vMoeModel(Glm4vModel):
    """One pipeline stage (or the whole model) of GLM-4.5V."""

    supports_sequence_parallel = False  # the routed experts are not written for sequence-sharded input

    def __init__(self, cfg: GlmConfig, plan: StagePlan, *, device=None, dtype=None):
        super().__init__(cfg, plan, device=device, dtype=dtype)
        text: MoeTextConfig = cfg.text  # type: ignore[assignment]
        if not plan.has_text or text.moe is None:
            return
        for i, layer in enumerate(self.text_decoder.decoder.layers):
            if text.is_moe(plan.llm_first + i):
                layer.mlp = MoeMLP(text.hidden_size, text.moe, device=device, dtype=dtype)

    def moe_layers(self) -> list[tuple[int, MoeMLP]]:
        """(global LLM layer, its MoE MLP) of this stage."""
        if not self.plan.has_text:
            return []
        return [(self.plan.llm_first + i, layer.mlp) for i, layer in enumerate(self.text_decoder.decoder.layers)
                if isinstance(layer.mlp, MoeMLP)]

    def shard_experts(self, mesh, group) -> int:  # noqa: ANN001 - the experts' 2-D (replica, ep) DeviceMesh, the ep token group
        """Expert parallel (``parallel.ep``): keep this rank's experts as DTensors on ``mesh``, route over ``group``."""
        from mm_glm.moe_ep import shard_experts

        return shard_experts(self, group, mesh=mesh)

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        super().init_weights(std)
        for _, mlp in self.moe_layers():
            mlp.router.expert_bias.zero_()  # a buffer: not among the parameters the base initialises

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        text = self.config.text
        return mrope_cos_sin(positions, text.rotary_dim, text.rope_theta, list(text.mrope_section))

    def forward(self, *stage_input: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The stage forward; a pipeline stage between LLM stages also passes the router balance
        statistics on, as one extra position of the hidden states (``mm_glm.moe_aux``)."""
        valid = _valid_rows(kwargs.get("attention_mask"), kwargs.get("segment_ids"))
        cp = getattr(self, "context_parallel", None)  # set by the engine: this rank holds chunks of each row
        self._valid_rows = None if valid is None else (cp.split(valid, 1) if cp is not None else valid).reshape(-1)
        for _, mlp in self.moe_layers():
            mlp.router_stats.clear()  # the balance loss is of this forward only
            mlp.valid_rows = self._valid_rows
        ids = kwargs.get("input_ids")
        # the balance loss's token count is the whole batch's, also under cp (its sums are the cp group's)
        self._tokens = valid.float().sum() if valid is not None else float(ids.numel()) if ids is not None else 0.0
        self._incoming: tuple[torch.Tensor, torch.Tensor] | None = None
        moe = self.config.text.moe
        if stage_input and self.plan.has_text and not self.plan.embedding:  # hidden states of an LLM stage
            hidden, probs, counts = unpack_stats(stage_input[0], moe.num_experts)
            stage_input, self._incoming = (hidden, *stage_input[1:]), (probs, counts)
        out = super().forward(*stage_input, **kwargs)
        if self.plan.has_text and not self.plan.head:
            out = pack_stats(out, *self._stage_sums())
        return out

    def _stage_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(S, C)`` of this stage's MoE layers plus what earlier stages sent."""
        moe = self.config.text.moe
        logits = [s for _, mlp in self.moe_layers() for s in mlp.router_stats]
        device = next(self.parameters()).device
        probs, counts = (router_sums(logits, moe.num_experts, moe.top_k, self._valid_rows) if logits else
                         (torch.zeros(moe.num_experts, device=device), torch.zeros(moe.num_experts, device=device)))
        if self._incoming is not None:
            probs, counts = probs + self._incoming[0].to(probs.device), counts + self._incoming[1].to(probs.device)
        return probs, counts

    def aux_losses(self) -> list[torch.Tensor]:
        """The router balance loss of the last training forward over *all* MoE layers (transformers'
        ``load_balancing_loss_func``): on the last stage, with the earlier stages' sums it received."""
        if not self.plan.head or not (self._incoming is not None or any(m.router_stats for _, m in self.moe_layers())):
            return []
        text = self.config.text
        probs, counts = self._stage_sums()
        cp = getattr(self, "context_parallel", None)
        if cp is not None:  # each cp rank summed its chunks: the loss is of the whole sequence's sums
            probs, counts = cp.share_sum(probs), cp.share_sum(counts)
        return [balance_loss(probs, counts, max(text.num_layers - text.first_k_dense_replace, 0) * self._tokens)]

    @property
    def expert_counts_shape(self) -> tuple[int, int]:
        """(LLM layers of the whole model, experts per layer): the table the engine logs per step."""
        text = self.config.text
        return text.num_layers, text.moe.num_experts

    def take_expert_counts(self) -> dict[int, torch.Tensor]:
        """``{global layer: tokens routed to each expert}`` since the last call (the engine logs them per step)."""
        out = {}
        for layer, mlp in self.moe_layers():
            counts = mlp.take_expert_counts()
            if counts is not None:
                out[layer] = counts
        return out


def _valid_rows(attention_mask: torch.Tensor | None, segment_ids: torch.Tensor | None) -> torch.Tensor | None:
    """``[B, T]`` 1 for real tokens, 0 for padding (what transformers masks in the balance loss)."""
    if attention_mask is not None:
        return attention_mask
    if segment_ids is not None:
        return segment_ids >= 0
    return None


build_model = Glm4vMoeModel.builder(parse_moe_config)
