"""GLM-4.5V's mixture-of-experts MLP: sigmoid router with a score-correction bias, routed experts
stacked and run as one grouped GEMM, one shared expert.

mm names (per layer, under ``text_decoder.decoder.layers.N.mlp.``):

- ``router.weight`` ``[E, H]``; ``router.expert_bias`` ``[E]`` (HF ``gate.e_score_correction_bias``):
  a persistent buffer kept in fp32 whatever the model's dtype, never trained by gradient;
- ``experts.weight1`` ``[E, H, 2I]`` (per expert ``[gate; up]`` transposed, so a token row times it
  gives ``[gate | up]``) and ``experts.weight2`` ``[E, I, H]``: the grouped GEMM's ``[E, K, N]``
  operands, and per expert the reference system's DCP layout (``ExpertMergeDcpConverter``);
- ``shared_experts.linear_fc1`` / ``linear_fc2``: the shared decoder's SwiGLU MLP.

Routing (transformers' ``Glm4vMoeTextTopkRouter``, one group): fp32 logits, sigmoid scores; the
top-k experts are chosen on score + bias; their weights are the unbiased scores, divided by their
sum when ``norm_topk_prob`` and times ``routed_scaling_factor``.

Each forward keeps, detached, the real (non-padding) tokens routed to each expert
(``tokens_per_expert``, summed until ``take_expert_counts`` reads them: the engine logs them per
step) and, while training, the
statistics the router balance loss needs (``mm_glm.moe_aux``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mm_core.kernels import get_kernel
from mm_core.nn import SwiGLUMLP


@dataclass(frozen=True)
class MoeConfig:
    """The routed and shared experts of one MoE layer."""

    num_experts: int
    top_k: int
    moe_intermediate_size: int
    shared_intermediate_size: int  # moe_intermediate_size x n_shared_experts
    norm_topk_prob: bool
    routed_scaling_factor: float


class Router(nn.Module):
    def __init__(self, hidden: int, cfg: MoeConfig, *, device=None, dtype=None):
        super().__init__()
        self.top_k, self.norm, self.scale = cfg.top_k, cfg.norm_topk_prob, cfg.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, hidden, device=device, dtype=dtype))
        self.register_buffer("expert_bias", torch.zeros(cfg.num_experts, device=device, dtype=torch.float32))

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module's signature
        """``model.to(dtype)`` moves the bias but never casts it: a bf16 copy would round the values
        that decide the top-k (``to(device)`` / ``to_empty`` still apply)."""
        bias = self.expert_bias
        super()._apply(fn, recurse)
        moved = self.expert_bias
        self.expert_bias = moved.float() if bias.is_meta else bias.to(device=moved.device)
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` ``[N, H]`` -> fp32 logits ``[N, E]``, weights ``[N, k]`` (fp32) and expert ids ``[N, k]``."""
        logits = F.linear(x.float(), self.weight.float())
        scores = logits.sigmoid()
        chosen = torch.topk(scores + self.expert_bias.float(), self.top_k, dim=-1, sorted=False).indices
        weights = scores.gather(1, chosen)
        if self.norm:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return logits, weights * self.scale, chosen


class GroupedExperts(nn.Module):
    """All routed experts of a layer, run as two grouped GEMMs over the tokens sorted by expert."""

    def __init__(self, hidden: int, cfg: MoeConfig, *, device=None, dtype=None):
        super().__init__()
        e, i = cfg.num_experts, cfg.moe_intermediate_size
        self.num_experts = e  # all of the layer's experts (this rank holds E / ep of them under expert parallel)
        self.ep_group = None  # set by mm_glm.moe_ep.shard_experts
        self.weight1 = nn.Parameter(torch.empty(e, hidden, 2 * i, device=device, dtype=dtype))
        self.weight2 = nn.Parameter(torch.empty(e, i, hidden, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``[N, H]``, ``chosen``/``weights`` ``[N, k]`` -> (output ``[N, H]``, rows per expert ``[E]``)."""
        if self.ep_group is not None:  # this rank holds some of the experts: all-to-all dispatch and combine
            from mm_core.engine.expert_parallel import experts_forward_ep

            return experts_forward_ep(x, chosen, weights, self.run, self.num_experts, self.ep_group)
        k = chosen.shape[1]
        flat = chosen.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.num_experts)
        token = order // k
        h = self.run(x[token], counts)
        h = h * weights.reshape(-1)[order].unsqueeze(-1)  # fp32 weights, as transformers multiplies them
        out = torch.zeros_like(x).index_add_(0, token, h.to(x.dtype))
        return out, counts

    def run(self, rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """The experts held here on ``rows`` sorted by (local) expert, ``counts[e]`` rows each."""
        grouped = get_kernel("grouped_mm", rows.device.type)
        w1, w2 = (_local(w).to(rows.dtype) for w in (self.weight1, self.weight2))  # ep: this rank's experts
        h = grouped(rows, w1, counts)
        return grouped(get_kernel("swiglu", rows.device.type)(h), w2, counts)


def _local(w: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (expert parallel in the engine), else the tensor."""
    return w.to_local() if hasattr(w, "to_local") else w


class MoeMLP(nn.Module):
    """``mlp`` of a GLM-4.5V MoE layer: routed experts plus the shared expert."""

    def __init__(self, hidden: int, cfg: MoeConfig, *, device=None, dtype=None):
        super().__init__()
        self.router = Router(hidden, cfg, device=device, dtype=dtype)
        self.experts = GroupedExperts(hidden, cfg, device=device, dtype=dtype)
        self.shared_experts = SwiGLUMLP(hidden, cfg.shared_intermediate_size, bias=False, device=device, dtype=dtype)
        self.num_experts, self.top_k = cfg.num_experts, cfg.top_k
        self.tokens_per_expert: torch.Tensor | None = None  # summed over forwards until taken
        self.valid_rows: torch.Tensor | None = None  # [N] 1 = real token (set by the model before a forward)
        self.router_stats: list[torch.Tensor] = []  # fp32 router logits [N, E] of training forwards

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        logits, weights, chosen = self.router(flat)
        routed, counts = self.experts(flat, chosen, weights)
        # training forwards only: not a no-grad probe (pipeline shapes), nor recomputation inside backward
        if torch.is_grad_enabled() and torch._C._current_graph_task_id() == -1:
            counts = counts.detach()
            if self.valid_rows is not None and self.valid_rows.numel() == flat.shape[0]:  # padding: routed, not counted
                w = self.valid_rows.to(counts.device, torch.float32).repeat_interleave(self.top_k)
                counts = torch.bincount(chosen.reshape(-1), weights=w, minlength=self.num_experts).long()
            self.tokens_per_expert = counts if self.tokens_per_expert is None else self.tokens_per_expert + counts
            if self.training:
                self.router_stats.append(logits)
        return routed.view_as(x) + self.shared_experts(x)

    def take_expert_counts(self) -> torch.Tensor | None:
        """Tokens routed to each expert since the last call (then reset)."""
        counts, self.tokens_per_expert = self.tokens_per_expert, None
        return counts
