"""The router balance loss of GLM-4.5V (Switch Transformer style), as transformers computes it
with ``output_router_logits=True`` (``load_balancing_loss_func``), and how it crosses pipeline stages.

Over all MoE layers' rows together (padding rows masked out): ``C[e]`` = how often expert ``e`` is
among the top-k of ``softmax(logits)`` per row (the top-k of the raw softmax, not the router's
biased sigmoid choice), ``S[e]`` = the sum of its softmax probabilities, ``R`` = the rows counted
(MoE layers x real tokens); the loss is ``E * sum_e (C[e] / R) * (S[e] / R)``. Only ``S`` carries
a gradient.

The loss is bilinear in sums over *all* layers, so a pipeline stage cannot compute its share
alone. Instead each LLM stage but the last passes the running sums on: one extra position
appended to the hidden states it sends (:func:`pack_stats`), holding ``S`` (differentiable) and
``C``, each split into three parts of the activations' dtype so that bf16 activations still carry
them to about 24 bits. The last stage adds its own layers and computes the exact loss; backward
carries the gradient of ``S`` back through the pipeline like any activation's.

Under context parallel each rank routes two chunks of every row, so its sums are its chunks'
share: the last stage adds the cp group's (``ContextParallel.share_sum``: the totals, with the
gradient of ``S`` to the rank's own share) and divides by the whole batch's ``R``, so every cp
rank holds the loss of the whole sequence (``Glm4vMoeModel.aux_losses``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

PARTS = 3  # dtype parts per value (hi, mid, lo): exact enough for fp32 sums sent as bf16


def router_sums(logits: Sequence[torch.Tensor], num_experts: int, top_k: int,
                valid_rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S, C)`` ``[E]`` fp32 of some MoE layers' logits ``[N, E]`` (``valid_rows`` ``[N]``: 1 = real token)."""
    device = logits[0].device if logits else (valid_rows.device if valid_rows is not None else None)
    counts = torch.zeros(num_experts, dtype=torch.float32, device=device)
    probs = torch.zeros(num_experts, dtype=torch.float32, device=device)
    mask = None if valid_rows is None else valid_rows.to(device=device, dtype=torch.float32)
    for layer in logits:
        p = torch.softmax(layer.float(), dim=-1)
        chosen = torch.topk(p, top_k, dim=-1).indices
        w = torch.ones(p.shape[0], device=p.device) if mask is None else mask
        counts = counts + torch.zeros_like(counts).scatter_add_(0, chosen.reshape(-1), w.repeat_interleave(top_k))
        probs = probs + (p * w.unsqueeze(-1)).sum(0)
    return probs, counts


def balance_loss(probs: torch.Tensor, counts: torch.Tensor, rows: float | torch.Tensor) -> torch.Tensor:
    """``E * sum(C / R * S / R)``."""
    return (counts / rows * (probs / rows)).sum() * probs.shape[0]


def router_balance_loss(logits: Sequence[torch.Tensor], num_experts: int, top_k: int,
                        valid_rows: torch.Tensor | None = None) -> torch.Tensor:
    """The whole loss from every MoE layer's logits (one process, all layers at hand)."""
    probs, counts = router_sums(logits, num_experts, top_k, valid_rows)
    tokens = logits[0].shape[0] if valid_rows is None else valid_rows.float().sum()
    return balance_loss(probs, counts, len(logits) * tokens)


def _split(x: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    parts, rest = [], x
    for _ in range(PARTS):
        part = rest.to(dtype)
        parts.append(part)
        rest = rest - part.float()
    return parts


def pack_stats(hidden: torch.Tensor, probs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``hidden`` ``[B, T, H]`` with one more position ``[B, 1, H]`` carrying ``S`` and ``C``."""
    b, _, h = hidden.shape
    values = torch.cat(_split(probs, hidden.dtype) + _split(counts.detach(), hidden.dtype))
    if values.numel() > b * h:
        raise ValueError(f"the router statistics ({values.numel()} values) do not fit one position of "
                         f"{b} x {h} hidden values")
    row = torch.cat([values, values.new_zeros(b * h - values.numel())]).view(b, 1, h)
    return torch.cat([hidden, row], dim=1)


def unpack_stats(received: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(hidden [B, T, H], S, C)`` from what :func:`pack_stats` sent."""
    values = received[:, -1].reshape(-1)[: 2 * PARTS * num_experts].float().view(2, PARTS, num_experts).sum(1)
    return received[:, :-1], values[0], values[1].detach()
