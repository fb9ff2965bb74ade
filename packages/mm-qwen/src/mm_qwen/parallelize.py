"""Tensor-parallel plan (DTensor) for Qwen2.5-VL, consistent with mm-format's tp split.

Column-parallel (``Shard(0)``): ``linear_qkv`` (whole GQA groups / whole ViT heads per rank, thanks
to the interleaved layouts), the projector's ``linear_fc1``, the word embedding (vocab rows) and the
output layer. Row-parallel (``Shard(1)``): ``linear_proj`` and ``linear_fc2`` (their biases
replicated). Norms and the patch embedding stay replicated (not in the plan).

Gated ``linear_fc1`` (``[gate; up]``): rank r must compute ``[gate_r; up_r]`` (mm-format's gated
column split), which plain ``Shard(0)`` of ``[gate; up]`` would not give. ``GatedColwiseParallel``
reorders the rows to ``[gate_0; up_0; gate_1; up_1; ...]`` before sharding, so each rank's local
tensor is exactly its mm rank file's ``linear_fc1``. Consequence: the DTensor's *global* view of a
gated ``linear_fc1`` under tp > 1 is that rank-blocked order; use ``unblock_gated_rows`` to get the
``[gate; up]`` order (e.g. before writing an HF checkpoint from a gathered tp state); the engine's
DCP checkpoints do this for styles marked ``gated_rows``, so they reshard across tp sizes.

Sequence parallel (``sequence_parallel=True``, text decoder only, Megatron-SP style): between
the tp regions the decoder's activations (residual stream, RMSNorms) are sharded over the sequence
(``Shard(1)``). The decoder's input (embedding output with the visual features scattered in, on
the whole sequence) is split on entry; ``linear_qkv`` / ``linear_fc1`` all-gather the sequence first
and ``linear_proj`` / ``linear_fc2`` reduce-scatter onto it, so attention (rotary, segment masks)
still sees the whole sequence. A later pipeline stage receives the sequence shard as it was sent.
The final norm returns a ``Shard(1)`` DTensor that the engine gathers for the loss. The sequence
length must divide by tp (the engine pads to a multiple of it).

Usage: ``parallelize_module(model, tp_mesh, tp_plan(model))`` on the (meta or loaded) full-size
stage; then load a rank's mm file with ``mm_qwen.loading`` or keep the distributed full weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def block_gated_rows(t: torch.Tensor, tp: int) -> torch.Tensor:
    """``[gate; up]`` rows -> ``[gate_0; up_0; gate_1; up_1; ...]`` for ``tp`` ranks."""
    gate, up = t.chunk(2, dim=0)
    return torch.cat([torch.cat([g, u]) for g, u in zip(gate.chunk(tp), up.chunk(tp))])


def unblock_gated_rows(t: torch.Tensor, tp: int) -> torch.Tensor:
    """Inverse of ``block_gated_rows``."""
    pieces = [p.chunk(2, dim=0) for p in t.chunk(tp)]
    return torch.cat([p[0] for p in pieces] + [p[1] for p in pieces])


def _gated_colwise():
    from torch.distributed.tensor import Shard, distribute_tensor
    from torch.distributed.tensor.parallel import ColwiseParallel

    class GatedColwiseParallel(ColwiseParallel):
        """Column-parallel for a fused ``[gate; up]`` linear: each rank gets ``[gate_r; up_r]``."""

        gated_rows = True  # tells the engine's checkpointing that the global row order is tp-blocked

        def _partition_linear_fn(self, name, module, device_mesh):
            tp = device_mesh.size()
            for pname, param in list(module.named_parameters(recurse=False)):
                if param.shape[0] % (2 * tp):
                    raise ValueError(f"{name}.{pname}: {param.shape[0] // 2} gate rows do not split over tp={tp}")
                rows = block_gated_rows(param.detach(), tp)
                dist = nn.Parameter(distribute_tensor(rows, device_mesh, [Shard(0)], src_data_rank=self.src_data_rank),
                                    requires_grad=param.requires_grad)
                module.register_parameter(pname, dist)

    return GatedColwiseParallel


def tp_plan(model: nn.Module, *, loss_parallel: bool = False, sequence_parallel: bool = False) -> dict[str, Any]:
    """``{module path: ParallelStyle}`` for this stage's modules.

    ``sequence_parallel=True`` shards the text decoder's activations over the sequence between the
    tp regions (see the module docstring).

    ``loss_parallel=True`` leaves the logits sharded over the vocabulary (``Shard(-1)`` DTensor) for
    a vocab-parallel cross-entropy; otherwise they are gathered (``Replicate``) as plain tensors.
    """
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
    )

    gated = _gated_colwise()
    plan: dict[str, Any] = {}
    enc = getattr(model, "image_encoder", None)
    if enc is not None:
        for i in range(len(enc.encoder.blocks.layers)):
            p = f"image_encoder.encoder.blocks.layers.{i}"
            plan[f"{p}.self_attention.linear_qkv"] = ColwiseParallel()
            plan[f"{p}.self_attention.linear_proj"] = RowwiseParallel()
            plan[f"{p}.mlp.linear_fc1"] = gated()
            plan[f"{p}.mlp.linear_fc2"] = RowwiseParallel()
        if hasattr(enc, "projector"):
            plan["image_encoder.projector.encoder.linear_fc1"] = ColwiseParallel()
            plan["image_encoder.projector.encoder.linear_fc2"] = RowwiseParallel()
    dec = getattr(model, "text_decoder", None)
    if dec is not None:
        sp = sequence_parallel
        seq = Shard(1)
        if hasattr(dec, "embedding"):
            plan["text_decoder.embedding.word_embeddings"] = RowwiseParallel(input_layouts=Replicate())
        if sp:  # (hidden, cos, sin, segment_ids, cache): split the hidden states over the sequence on entry
            first = Replicate() if hasattr(dec, "embedding") else seq  # a later stage gets the shard as sent
            plan["text_decoder"] = PrepareModuleInput(input_layouts=(first, None, None, None, None),
                                                      desired_input_layouts=(seq, None, None, None, None),
                                                      use_local_output=True)
        for i in range(len(dec.decoder.layers)):
            p = f"text_decoder.decoder.layers.{i}"
            if sp:
                plan[f"{p}.input_layernorm"] = SequenceParallel()
                plan[f"{p}.pre_mlp_layernorm"] = SequenceParallel()
                plan[f"{p}.self_attention.linear_qkv"] = ColwiseParallel(input_layouts=seq)
                plan[f"{p}.self_attention.linear_proj"] = RowwiseParallel(output_layouts=seq)
                plan[f"{p}.mlp.linear_fc1"] = gated(input_layouts=seq)
                plan[f"{p}.mlp.linear_fc2"] = RowwiseParallel(output_layouts=seq)
            else:
                plan[f"{p}.self_attention.linear_qkv"] = ColwiseParallel()
                plan[f"{p}.self_attention.linear_proj"] = RowwiseParallel()
                plan[f"{p}.mlp.linear_fc1"] = gated()
                plan[f"{p}.mlp.linear_fc2"] = RowwiseParallel()
        if sp and hasattr(dec.decoder, "final_layernorm"):
            plan["text_decoder.decoder.final_layernorm"] = SequenceParallel(use_local_output=False)
        if hasattr(dec, "output_layer"):
            into = seq if sp else Replicate()
            plan["text_decoder.output_layer"] = (
                ColwiseParallel(input_layouts=into, output_layouts=Shard(-1), use_local_output=False)
                if loss_parallel else ColwiseParallel(input_layouts=into, output_layouts=Replicate()))
    return plan
