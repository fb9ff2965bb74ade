"""Weighted cross entropy from final hidden states and the LM head weight, full or chunked.

``compute_mode="chunk"`` never materialises the ``[N, V]`` logits: it walks ``chunk_size`` tokens
at a time and, inside the forward, computes that chunk's loss and its gradients with respect to
the hidden states and the head weight; backward only scales the stored gradients. At vocabulary
151936 the full fp32 logits of 8192 tokens take 5 GB; a 1024-token chunk takes 0.6 GB.
Only tokens with a non-zero weight are computed at all (prompt tokens cost nothing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mm_core.batch import IGNORE_INDEX
from mm_core.nn.vocab_padding import VocabPadding

DYNAMIC_CHUNK_ELEMENTS = 1 << 26  # logits elements of one chunk in dynamic_chunk mode (256 MiB fp32)


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """Targets aligned with the positions that predict them: position t predicts labels[t + 1]."""
    pad = torch.full_like(labels[..., :1], IGNORE_INDEX)
    return torch.cat([labels[..., 1:], pad], dim=-1)


def sample_ids_for(targets: torch.Tensor, segment_ids: torch.Tensor | None) -> torch.Tensor:
    """Unique sample numbers across the micro-batch (rows x packed segments), -1 on padding."""
    b, t = targets.shape
    if segment_ids is None:
        return torch.arange(b, device=targets.device).unsqueeze(1).expand(b, t).clone()
    seg = segment_ids.long()
    per_row = seg.max(dim=1).values.clamp(min=-1) + 1  # samples in each row
    offsets = torch.cumsum(per_row, 0) - per_row
    return torch.where(seg >= 0, seg + offsets.unsqueeze(1), torch.full_like(seg, -1))


def compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The precision of the head's matmuls: autocast's when it is on (the weights are fp32 master
    copies then), else the inputs' own. Logits, softmax and sums are at least fp32 either way."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(hidden.dtype, weight.dtype)


_FP32_OUTPUT_MM = {"cuda"}  # devices whose bf16/fp16 matmul can write fp32 results directly


def add_matmul_(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``out += a @ b`` with ``out`` fp32 and ``a``, ``b`` possibly bf16/fp16: the matmul runs in
    the inputs' precision (tensor cores) and only the accumulator is fp32."""
    if a.dtype == out.dtype:
        out.addmm_(a, b)
    elif a.device.type in _FP32_OUTPUT_MM:
        out.add_(torch.mm(a, b, out_dtype=out.dtype))
    else:
        out.add_(a @ b)


def _scaled_saved_grads(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The (hidden, weight) gradients computed in forward, scaled by the incoming gradient."""
    grad_h, grad_w = ctx.saved_tensors
    gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
    gw = grad_w * grad_out.to(grad_w.dtype) if grad_w is not None else None
    return gh, gw


class _ChunkedCE(torch.autograd.Function):
    """sum_i w_i * CE(h_i @ W^T, y_i) with gradients computed chunk by chunk in the forward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                weights: torch.Tensor, chunk_size: int) -> torch.Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        cd = compute_dtype(hidden, weight)
        acc = torch.promote_types(cd, torch.float32)  # at least fp32 for logits, sums and grad_w
        total = torch.zeros((), dtype=acc, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        with torch.autocast(hidden.device.type, enabled=False):
            hidden_c, weight_c = hidden.to(cd), weight.to(cd)
            for start in range(0, hidden.shape[0], chunk_size):
                h = hidden_c[start:start + chunk_size]
                y = targets[start:start + chunk_size]
                w = weights[start:start + chunk_size].to(acc)
                logits = (h @ weight_c.t()).to(acc)
                lse = torch.logsumexp(logits, dim=-1)
                picked = logits.gather(1, y.unsqueeze(1)).squeeze(1)
                total += ((lse - picked) * w).sum()
                if need_h or need_w:
                    g = logits.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place of the logits
                    g.mul_(w.unsqueeze(1))
                    g.scatter_add_(1, y.unsqueeze(1), -w.unsqueeze(1))
                    g = g.to(cd)
                    if need_h:
                        grad_h[start:start + chunk_size] = g @ weight_c
                    if need_w:
                        add_matmul_(grad_w, g.t(), h)
                del logits
        ctx.save_for_backward(grad_h if need_h else None, grad_w.to(weight.dtype) if need_w else None)
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        return *_scaled_saved_grads(ctx, grad_out), None, None, None


class _VocabParallelChunkedCE(torch.autograd.Function):
    """Like ``_ChunkedCE`` with the LM head split over vocabulary rows across a tensor-parallel group:
    each rank computes logits of its rows only; max, sum of exponentials and the target logit are
    all-reduced per chunk, and the hidden-state gradient once at the end. No rank ever holds the
    whole head or whole-vocabulary logits."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                chunk_size: int, vocab_start: int, group) -> torch.Tensor:
        import torch.distributed as dist

        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        cd = compute_dtype(hidden, weight)
        acc = torch.promote_types(cd, torch.float32)
        n_local = weight.shape[0]
        total = torch.zeros((), dtype=acc, device=hidden.device)
        grad_h = torch.zeros(hidden.shape, dtype=acc, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        with torch.autocast(hidden.device.type, enabled=False):
            hidden_c, weight_c = hidden.to(cd), weight.to(cd)
            for start in range(0, hidden.shape[0], chunk_size):
                h = hidden_c[start:start + chunk_size]
                y = targets[start:start + chunk_size] - vocab_start
                w = weights[start:start + chunk_size].to(acc)
                mine = (y >= 0) & (y < n_local)
                y = torch.where(mine, y, torch.zeros_like(y))
                logits = (h @ weight_c.t()).to(acc)
                m = logits.max(dim=-1).values
                dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
                logits.sub_(m.unsqueeze(1))
                picked = logits.gather(1, y.unsqueeze(1)).squeeze(1) * mine
                sums = torch.stack([logits.exp().sum(-1), picked])
                dist.all_reduce(sums, group=group)
                lse = sums[0].log()  # relative to m
                total += ((lse - sums[1]) * w).sum()
                if need_h or need_w:
                    g = logits.sub_(lse.unsqueeze(1)).exp_()
                    g.mul_(w.unsqueeze(1))
                    g.scatter_add_(1, y.unsqueeze(1), -(w * mine).unsqueeze(1))
                    g = g.to(cd)
                    if need_h:
                        add_matmul_(grad_h[start:start + chunk_size], g, weight_c)
                    if need_w:
                        add_matmul_(grad_w, g.t(), h)
                del logits
        if need_h:
            dist.all_reduce(grad_h, group=group)  # each rank holds its rows' share of dL/dh
        ctx.save_for_backward(grad_h.to(hidden.dtype) if need_h else None, grad_w.to(weight.dtype) if need_w else None)
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        return *_scaled_saved_grads(ctx, grad_out), None, None, None, None, None


def _vocab_shard(weight: torch.Tensor, padding: VocabPadding | None = None):
    """(local rows, first row, process group) of a head sharded over rows on a 1-D mesh, else None;
    with a padded vocabulary, only the rank's real rows and their first canonical row."""
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(weight, DTensor) or weight.device_mesh.ndim != 1 or weight.placements != (Shard(0),):
        return None
    if padding is not None:
        local, start = padding.local_rows(weight.to_local(), weight.device_mesh.get_local_rank())
        return local, start, weight.device_mesh.get_group()
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offset = compute_local_shape_and_global_offset(weight.shape, weight.device_mesh, weight.placements)
    return weight.to_local(), int(offset[0]), weight.device_mesh.get_group()


def weighted_ce_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                    *, compute_mode: str = "default", chunk_size: int = 1024,
                    vocab_padding: VocabPadding | None = None) -> torch.Tensor:
    """sum over tokens of ``weights * CE`` (at least fp32); tokens with weight 0 are skipped.

    ``hidden`` is ``[..., H]``, ``targets``/``weights`` ``[...]`` (targets already shifted; -100 =
    no loss), ``weight`` is the LM head ``[V, H]``; a DTensor head split over vocabulary rows
    (tensor parallel) is used shard by shard, never gathered; ``vocab_padding``: the head's rows are
    padded per rank (``mm_core.nn.vocab_padding``) and only the real ones count.
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    shard = _vocab_shard(weight, vocab_padding)
    if shard is None and hasattr(weight, "full_tensor"):
        weight = weight.full_tensor()  # another layout of a distributed head: gather it
        if vocab_padding is not None:
            weight = vocab_padding.unpad(weight)
    y = targets.reshape(-1)
    w = weights.reshape(-1)
    keep = (w != 0) & (y != IGNORE_INDEX)
    idx = keep.nonzero().squeeze(1)
    h, y, w = h.index_select(0, idx), y.index_select(0, idx), w.index_select(0, idx)
    if shard is not None:  # tensor-parallel head: vocabulary-parallel (one chunk in "default" mode)
        local, start, group = shard
        size = {"default": max(1, h.shape[0]), "chunk": chunk_size,
                "dynamic_chunk": max(1, DYNAMIC_CHUNK_ELEMENTS // local.shape[0])}[compute_mode]
        return _VocabParallelChunkedCE.apply(h, local, y, w, size, start, group)
    if compute_mode == "default":
        acc = torch.promote_types(hidden.dtype, torch.float32)
        ce = F.cross_entropy((h @ weight.t()).to(acc), y, reduction="none")
        return (ce * w.to(acc)).sum()
    if compute_mode == "dynamic_chunk":
        chunk_size = max(1, DYNAMIC_CHUNK_ELEMENTS // weight.shape[0])
    elif compute_mode != "chunk":
        raise ValueError(f"training.compute_mode: unknown '{compute_mode}'; valid: default, chunk, dynamic_chunk")
    return _ChunkedCE.apply(h, weight, y, w, chunk_size)
