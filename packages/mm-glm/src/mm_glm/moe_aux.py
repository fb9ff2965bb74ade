"""The router balance loss of GLM-4.5V (Switch Transformer style), as transformers computes it
with ``output_router_logits=True`` (``load_balancing_loss_func``).

Over all MoE layers' rows together (padding rows masked out): ``f[e]`` = how often expert ``e`` is
among the top-k of ``softmax(logits)`` per row, ``P[e]`` = its mean softmax probability; the loss
is ``E * sum_e f[e] * P[e]``. Note the top-k here is on the softmax of the raw logits, not the
router's biased sigmoid choice. Only ``P`` carries a gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def router_balance_loss(logits: Sequence[torch.Tensor], num_experts: int, top_k: int,
                        valid_rows: torch.Tensor | None = None) -> torch.Tensor:
    """``logits``: one ``[N, E]`` tensor per MoE layer (same rows); ``valid_rows`` ``[N]`` (1 = real token)."""
    counts = torch.zeros(num_experts, dtype=torch.float32, device=logits[0].device)
    probs = torch.zeros(num_experts, dtype=torch.float32, device=logits[0].device)
    rows = torch.zeros((), dtype=torch.float32, device=logits[0].device)
    mask = None if valid_rows is None else valid_rows.to(device=counts.device, dtype=torch.float32)
    for layer in logits:
        p = torch.softmax(layer.float(), dim=-1)
        chosen = torch.topk(p, top_k, dim=-1).indices
        w = torch.ones(p.shape[0], device=p.device) if mask is None else mask
        counts = counts + torch.zeros_like(counts).scatter_add_(0, chosen.reshape(-1), w.repeat_interleave(top_k))
        probs = probs + (p * w.unsqueeze(-1)).sum(0)
        rows = rows + w.sum()
    return (counts / rows * (probs / rows)).sum() * num_experts
