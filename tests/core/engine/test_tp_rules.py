"""The engine's tensor-parallel plan comes from the converter's rules (no process group needed here):
each rule split maps to its DTensor style; uneven vocabularies and heads train over padded shards,
any other split that tp does not divide evenly is refused by name before anything runs (mm-format's
uneven split and DTensor's differ)."""

from __future__ import annotations

import pytest

from mm_core.checkpoint.api import get_converter
from mm_core.engine.tp_rules import derive_tp_plan, stage_splits
from mm_core.errors import ConfigError
from mm_qwen.model import build_model
from mm_qwen.tiny import tiny_config_dict


def _plan(hf: dict, tp: int, **kw):
    table = get_converter("Qwen2_5_VLConverter")
    model = build_model(hf, device="meta")
    splits = stage_splits(table, hf, table.placement(hf, tp, {}), 0)
    return derive_tp_plan(model, splits, tp, **kw)


def test_each_rule_split_becomes_its_style():
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, SequenceParallel

    plan = _plan(tiny_config_dict(vision_depth=1, text_layers=1), 2, sequence_parallel=True)
    layer = "text_decoder.decoder.layers.0."
    assert type(plan[layer + "self_attention.linear_qkv"]) is ColwiseParallel
    assert type(plan[layer + "self_attention.linear_proj"]) is RowwiseParallel
    assert plan[layer + "mlp.linear_fc1"].row_sections == 2  # [gate_r; up_r] on rank r
    assert isinstance(plan[layer + "input_layernorm"], SequenceParallel)
    assert plan["image_encoder.encoder.blocks.layers.0.mlp.linear_fc1"].row_sections == 2
    assert type(plan["text_decoder.embedding.word_embeddings"]) is RowwiseParallel
    assert "image_encoder.encoder.patch_embed.proj" not in plan  # replicated in the rules


def test_uneven_vocabulary_where_dtensor_and_mm_format_differ_is_padded():
    hf = tiny_config_dict(vision_depth=1, text_layers=1, heads=4, kv_heads=4, vit_heads=4, vit_hidden=32)
    hf["text_config"]["vocab_size"] = 322  # tp 4: mm-format 81/81/80/80, torch.chunk 81/81/81/79
    plan = _plan(hf, 4)
    for path in ("text_decoder.embedding.word_embeddings", "text_decoder.output_layer"):
        assert plan[path].vocab_padding.rows == (81, 81, 80, 80)


def test_uneven_heads_are_padded_and_other_uneven_splits_refused_by_name():
    from torch import nn

    from mm_core.checkpoint.ops import Split
    from mm_core.nn.head_padding import HeadPadding

    model = nn.Module()
    model.attn = nn.Linear(8, 3 * 5 * 4)  # [Q; K; V] of 5 heads of 4: padded (mm_core.nn.head_padding)
    model.rows = nn.Linear(8, 5)  # 5 rows at tp 4: mm-format 2/1/1/1, torch.chunk 2/2/1/0, not a vocabulary
    splits = {"attn.weight": Split(dim=0, parts=3, unit=4, uneven=True, what="heads")}
    assert derive_tp_plan(model, splits, 2)["attn"].param_rows == {"weight": HeadPadding((3, 2), 4, parts=3)}
    with pytest.raises(ConfigError, match=r"rows.weight has 5 rows, which tp 4 does not divide"):
        derive_tp_plan(model, {"rows.weight": Split(dim=0, uneven=True)}, 4)


def test_vocab_padding_round_trips_and_maps_ids():
    import torch

    from mm_core.nn.vocab_padding import VocabPadding

    pad = VocabPadding.of(10, 4)  # rows 3/3/2/2, width 3
    assert pad.rows == (3, 3, 2, 2)
    full = torch.arange(10.0).unsqueeze(1)
    padded = pad.pad(full)
    assert padded.shape == (12, 1) and padded[9].item() == 8  # rank 3 starts at row 9
    assert padded[8].item() == padded[11].item() == 0  # the ghost rows of ranks 2 and 3
    assert torch.equal(pad.unpad(padded), full)
    ids = torch.arange(10)
    assert torch.equal(padded[pad.padded_ids(ids), 0], full[ids, 0])  # lookups land on the real rows
    local, start = pad.local_rows(padded[9:12], 3)
    assert start == 8 and torch.equal(local, full[8:10])


def test_uneven_vocabulary_where_both_agree_is_trained():
    hf = tiny_config_dict(vision_depth=1, text_layers=1)
    hf["text_config"]["vocab_size"] = 321  # tp 2: 161/160 in both
    assert "text_decoder.embedding.word_embeddings" in _plan(hf, 2)


@pytest.mark.parametrize("size,tp", [(321, 2), (322, 4), (151674, 8), (64, 4), (7, 3)])
def test_dtensor_rows_are_torch_chunk(size, tp):
    import torch

    from mm_core.engine.tp_rules import dtensor_rows

    want = [len(c) for c in torch.arange(size).chunk(tp)]
    assert dtensor_rows(size, tp) == want + [0] * (tp - len(want))
