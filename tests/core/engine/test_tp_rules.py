"""The engine's tensor-parallel plan comes from the converter's rules (no process group needed here):
each rule split maps to its DTensor style, and a split that tp does not divide evenly is refused by
name before anything runs (mm-format's uneven split and DTensor's differ)."""

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


def test_uneven_vocabulary_where_dtensor_and_mm_format_differ_is_refused_by_name():
    hf = tiny_config_dict(vision_depth=1, text_layers=1, heads=4, kv_heads=4, vit_heads=4, vit_hidden=32)
    hf["text_config"]["vocab_size"] = 322  # tp 4: mm-format 81/81/80/80, torch.chunk 81/81/81/79
    with pytest.raises(ConfigError, match=r"word_embeddings.weight has 322 vocabulary rows, which tp 4 does not"):
        _plan(hf, 4)


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
