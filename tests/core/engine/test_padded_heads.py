"""Uneven attention heads: the padded layout holds exactly mm-convert's pieces, and the derived plan
pads the head splits (and only those) that tp does not divide.

The trained equivalence (tp 3 against one process) is in tests/internvl/test_tp.py.
"""

from __future__ import annotations

import pytest
import torch

from mm_core.checkpoint.ops import Split
from mm_core.nn.head_padding import HeadPadding


@pytest.mark.parametrize("heads,tp,parts,dim", [(25, 8, 3, 0), (25, 8, 1, 1), (4, 3, 3, 0), (5, 2, 1, 0),
                                                (6, 3, 3, 0)])
def test_padded_shards_are_the_converter_pieces_plus_zero_heads(heads, tp, parts, dim):
    d = 2
    shape = [parts * heads * d, 3] if dim == 0 else [3, heads * d]
    canonical = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape) + 1
    split = Split(dim=dim, parts=parts, unit=d, uneven=True, what="heads")
    pad = HeadPadding.of(heads, tp, d, parts=parts, dim=dim)
    engine = pad.pad(canonical)
    assert engine.shape[dim] == pad.padded_size
    shards = engine.chunk(tp, dim=dim)  # what DTensor's Shard(dim) gives each rank
    for r, (shard, piece) in enumerate(zip(shards, split.split(canonical, tp))):
        assert torch.equal(shard, pad.pad_piece(piece))
        assert torch.equal(pad.real_piece(shard, r), piece)
        ghosts = shard.count_nonzero() - piece.count_nonzero()
        assert ghosts == 0  # every ghost entry is zero
    assert torch.equal(pad.unpad(engine), canonical)


def test_meta_tensors_pad_too():
    pad = HeadPadding.of(25, 8, 4, parts=3)
    assert pad.pad(torch.empty(300, 7, device="meta")).shape == (8 * 3 * 4 * 4, 7)


def test_plan_pads_uneven_vit_heads_and_shards_norms_over_heads():
    """tp 3 on a tiny InternViT-6B-style model with 4 heads: qkv, proj and q/k norms by heads."""
    from mm_core.engine.padded_heads import head_paddings
    from mm_core.engine.tp_rules import derive_tp_plan, stage_splits
    from mm_internvl.convert import InternVLConverter
    from mm_internvl.model import build_model
    from mm_internvl.tiny import tiny_config_dict

    hf = tiny_config_dict(qk_norm=True, vision={"intermediate_size": 48},
                          text={"num_attention_heads": 6, "num_key_value_heads": 3, "hidden_size": 48,
                                "intermediate_size": 96})
    model = build_model(hf)
    conv = InternVLConverter()
    splits = stage_splits(conv, hf, conv.placement(hf, 3, {}), 0)
    pads = head_paddings(splits, model, 3)
    attn = "image_encoder.encoder.encoder.layers.0.self_attention."
    assert pads[attn + "linear_qkv"]["weight"] == HeadPadding((2, 1, 1), 8, parts=3, dim=0)
    assert pads[attn + "linear_proj"] == {"weight": HeadPadding((2, 1, 1), 8, parts=1, dim=1)}
    assert pads[attn + "q_layernorm"] == {"weight": HeadPadding((2, 1, 1), 8)}
    assert not any(p.startswith("text_decoder") for p in pads)  # 3 kv groups: even
    plan = derive_tp_plan(model, splits, 3)
    assert type(plan[attn + "linear_qkv"]).__name__ == "PaddedHeadsLinear"
    assert type(plan[attn + "k_layernorm"]).__name__ == "HeadShardedNorm"
    assert type(plan["text_decoder.embedding.word_embeddings"]).__name__ == "PaddedVocabEmbedding"
    # at tp 2 the 4 heads divide: no padding, but the norms over all heads still all-reduce
    hf2 = tiny_config_dict(qk_norm=True)
    even = derive_tp_plan(build_model(hf2), stage_splits(conv, hf2, conv.placement(hf2, 2, {}), 0), 2)
    assert type(even[attn + "linear_qkv"]).__name__ == "SectionedColwiseParallel"
    assert type(even[attn + "q_layernorm"]).__name__ == "HeadShardedNorm"
    assert even[attn + "q_layernorm"].param_rows == {}


def test_sharded_rms_norm_in_one_process_is_the_kernel():
    import torch.distributed as dist

    from mm_core.kernels.reference import rms_norm
    from mm_core.nn.head_padding import sharded_rms_norm

    if dist.is_initialized():
        pytest.skip("a process group exists")
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    try:
        x, w = torch.randn(2, 5, 12), torch.randn(12)
        padded = torch.cat([x, torch.zeros(2, 5, 4)], dim=-1)  # ghost channels add nothing
        out = sharded_rms_norm(padded, torch.cat([w, torch.zeros(4)]), 1e-6, 12, dist.group.WORLD)
        torch.testing.assert_close(out[..., :12], rms_norm(x, w, 1e-6))
        assert not out[..., 12:].any()
    finally:
        dist.destroy_process_group()


def test_checkpoint_order_of_padded_heads_is_canonical():
    """Saving drops the ghost heads and loading puts them back, on the padded dim (row_order)."""
    from mm_core.engine.row_order import canonical_rows, engine_rows

    pad = HeadPadding.of(5, 3, 2, dim=1)  # an output projection's columns: 2/2/1 heads of 2, padded to 2
    canonical = torch.randn(4, 10)
    engine = engine_rows(canonical, pad)
    assert engine.shape == (4, 12) and not engine[:, 10:].any()
    assert torch.equal(canonical_rows(engine, pad), canonical)
