"""Batched generation with a KV cache: greedy or sampling, stop tokens, left padding.

Works with any model whose forward takes ``input_ids``, ``attention_mask`` (and its media keys) plus
``cache=KVCache()`` and returns logits ``[B, T, V]`` for the tokens it was given (or, with
``return_hidden=True``, hidden states for ``model.output_weight()``), keeping in the
cache what the next call needs (keys/values, padding as segment ids, next rotary positions).
Prompts are left-padded so every row's last prompt token sits in the last column.
Under tensor parallel (a model parallelised by its DTensor plan) every rank of the tp group runs
the same loop; the LM head's vocabulary shards are gathered for the last position only, and the
chosen tokens are broadcast from the group's first rank so the ranks never drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mm_core.contracts import StageModel, missing_members
from mm_core.nn.kv_cache import KVCache


@dataclass
class GenerationConfig:
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    stop_token_ids: list[int] = field(default_factory=list)
    pad_token_id: int = 0
    seed: int | None = None


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask all but the top-k tokens and the smallest set whose probability reaches top-p."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def next_tokens(logits: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Pick one token per row from last-position logits ``[B, V]``."""
    if not cfg.do_sample:
        return logits.argmax(-1)
    logits = _filter_logits(logits.float() / max(cfg.temperature, 1e-6), cfg.top_k, cfg.top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def _last_logits(model: torch.nn.Module, inputs: dict[str, Any], cache: KVCache) -> torch.Tensor:
    """Logits of each row's last position only: with a 150k vocabulary, full prefill logits of a
    long multimodal prompt would cost gigabytes. Uses ``return_hidden`` + ``output_weight()`` for
    mm stage models (``mm_core.contracts.StageModel``), else slices the full logits."""
    if not missing_members(model, StageModel):
        hidden = model(**inputs, cache=cache, return_hidden=True)[:, -1]
        return head_logits(model, hidden)
    return model(**inputs, cache=cache)[:, -1]


def head_logits(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``hidden @ output_weight().T``; a tensor-parallel head (a DTensor sharded over the
    vocabulary, possibly zero-padded: ``vocab_padding``) gives the gathered logits of the real rows."""
    weight = model.output_weight()
    if not hasattr(weight, "device_mesh"):
        return torch.nn.functional.linear(hidden, weight)
    from mm_core.family.decoder import tied_logits
    from mm_core.nn.vocab_padding import head_padding

    logits = tied_logits(hidden, weight)
    padding = head_padding(model, weight)
    return padding.unpad(logits, dim=-1) if padding is not None else logits


def _same_on_all_ranks(tokens: torch.Tensor, group: Any) -> torch.Tensor:
    """The tokens of the group's first rank (sampling, or a near-tie after the all-reduces, could
    otherwise differ between ranks, and a rank that stops early would hang the others)."""
    import torch.distributed as dist

    dist.broadcast(tokens, src=dist.get_global_rank(group, 0), group=group)
    return tokens


@torch.no_grad()
def generate(model: torch.nn.Module, inputs: dict[str, Any], cfg: GenerationConfig,
             tp_group: Any = None) -> list[list[int]]:
    """New token ids per row (stop token included when hit), for a left-padded prompt batch;
    ``tp_group``: the tensor-parallel process group the model is sharded over (None: one process)."""
    input_ids = inputs["input_ids"]
    bsz = input_ids.shape[0]
    mask = inputs.get("attention_mask")
    if mask is not None and bool((mask[:, -1] == 0).any()):
        raise ValueError("generation needs left-padded prompts (padding_side='left'): a row ends in padding")
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(cfg.seed)
    cache = KVCache()
    logits = _last_logits(model, inputs, cache)
    stop = torch.tensor(cfg.stop_token_ids or [-1], device=input_ids.device)
    out: list[list[int]] = [[] for _ in range(bsz)]
    alive = torch.arange(bsz, device=input_ids.device)  # original row of each cache row
    for step in range(cfg.max_new_tokens):
        tokens = next_tokens(logits, cfg, generator)
        if tp_group is not None:
            tokens = _same_on_all_ranks(tokens.contiguous(), tp_group)
        for row, tok in zip(alive.tolist(), tokens.tolist()):
            out[row].append(tok)
        done = torch.isin(tokens, stop)
        if step == cfg.max_new_tokens - 1 or bool(done.all()):
            break
        if bool(done.any()):  # drop finished rows from the cache
            keep = (~done).nonzero().squeeze(-1)
            cache.select(keep)
            alive, tokens = alive[keep], tokens[keep]
        logits = _last_logits(model, {"input_ids": tokens[:, None]}, cache)
    return out
