"""Conformance: the shards the engine trains are the pieces mm-convert writes.

Run inside a tp process group: the whole model is loaded on every rank, sharded by the plan the
engine derives from the converter's rules, and each rank's local tensors are compared byte for
byte with what the converter streams for that rank (``hf_to_mm_rank``). Gated / sectioned
weights compare in their per-rank order (``[gate_r; up_r]``), which is what both sides hold; a
padded vocabulary's real rows must be the piece and its ghost rows zero, and so must padded heads'.
"""

from __future__ import annotations

from pathlib import Path

import torch


def tp_shard_mismatches(hf_dir: str | Path, tp_size: int, tp_rank: int, mesh) -> list[str]:
    """Names whose engine shard differs from mm-convert's piece on this rank (empty: they agree)."""
    from torch.distributed.tensor.parallel import parallelize_module

    from mm_core.checkpoint.api import hf_to_mm_rank
    from mm_core.engine.tp_rules import plan_from_rules
    from mm_core.nn.head_padding import param_padding
    from mm_core.nn.pretrained import load_pretrained, resolve_hf_config
    from mm_core.nn.state import checkpoint_tensors
    from mm_core.nn.vocab_padding import padding_of
    from mm_core.plugins import get_plugin_manager

    config, _ = resolve_hf_config(hf_dir)
    spec = get_plugin_manager().model_for_hf_config(config)
    model = load_pretrained(hf_dir, device="cpu", dtype=torch.float32)
    parallelize_module(model, mesh, plan_from_rules(model, spec.converter, config, tp_size))
    pieces = hf_to_mm_rank(spec.converter, hf_dir, tp_size=tp_size, tp_rank=tp_rank)
    params = checkpoint_tensors(model)  # parameters and persistent buffers (an MoE router's bias)
    bad = [f"{name}: in only one of engine / converter" for name in sorted(set(params) ^ set(pieces))]
    for name in sorted(set(params) & set(pieces)):
        p = params[name]
        local = p.to_local() if hasattr(p, "to_local") else p
        module = model.get_submodule(name.rpartition(".")[0])
        padding = padding_of(module)
        heads = param_padding(module, name.rpartition(".")[2])
        if heads is not None:  # padded heads: each section's real heads, then zero ghost heads
            if not torch.equal(local.detach(), heads.pad_piece(pieces[name].to(local.dtype))):
                bad.append(f"{name}: padded heads {tuple(local.shape)} are not the converter's "
                           f"{tuple(pieces[name].shape)} followed by zero heads")
            continue
        if padding is not None:  # a padded vocabulary: the real rows, then zero ghost rows
            if local[padding.rows[tp_rank]:].count_nonzero():
                bad.append(f"{name}: ghost rows of the padded vocabulary are not zero")
            local, _ = padding.local_rows(local, tp_rank)
        piece = pieces[name].to(local.dtype)
        if local.shape != piece.shape or not torch.equal(local.detach(), piece):
            bad.append(f"{name}: engine {tuple(local.shape)} vs converter {tuple(piece.shape)}")
    return bad
