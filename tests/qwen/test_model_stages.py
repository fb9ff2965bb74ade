"""Stage-built models chained by hand equal the whole model; placement follows mm-format."""

from __future__ import annotations

import re

import pytest
import torch

from mm_core.errors import ConfigError
from mm_qwen.model import build_model
from mm_qwen.tiny import make_inputs, tiny_config_dict

LAYOUTS = [  # (vit_pp_layers, llm_pp_layers, tied); virtual chunks: the conformance suite
    ([4, 0], [1, 3], True),  # vision and the first LLM layer share stage 0; tied: the head holds a copy
    ([2, 2], [0, 4], False),  # the projector and the embedding live on different stages
    ([1, 3, 0], [0, 0, 4], False),  # the stage with the projector hands visual features on
    ([0, 4], [0, 4], False),  # an empty first stage hands an empty tensor on
]


def _global_name(name: str, model) -> str:
    m = re.match(r"(image_encoder\.encoder\.blocks\.layers|text_decoder\.decoder\.layers)\.(\d+)\.(.*)", name)
    if not m:
        return name
    first = model.plan.vit_first if name.startswith("image") else model.plan.llm_first
    return f"{m.group(1)}.{int(m.group(2)) + first}.{m.group(3)}"


def _stage_state(whole_state: dict, stage) -> dict:
    out = {}
    for name in stage.state_dict():
        src = _global_name(name, stage)
        if src == "text_decoder.output_layer.weight" and src not in whole_state:  # tied: the last stage's copy
            src = "text_decoder.embedding.word_embeddings.weight"
        out[name] = whole_state[src]
    return out


@pytest.mark.parametrize("vit,llm,tied", LAYOUTS)
def test_stages_chained_by_hand_equal_the_whole_model(vit, llm, tied):
    torch.set_num_threads(1)
    config = tiny_config_dict(tied=tied)
    torch.manual_seed(0)
    whole = build_model(config, device="cpu").eval()
    state = whole.state_dict()
    batch = make_inputs(config, [[("text", 3), ("image", (1, 8, 8)), ("text", 2), ("video", (2, 4, 4), 2.0)],
                                 [("text", 6)]])
    n = len(re.findall(r"\d+", str(vit)))
    stages = []
    for s in range(n):
        stage = build_model(config, vit_pp_layers=vit, llm_pp_layers=llm, pp_rank=s, device="meta")
        stage.load_state_dict(_stage_state(state, stage), assign=True, strict=True)
        stages.append(stage.eval())
    with torch.no_grad():
        out = stages[0](**batch)
        for stage in stages[1:]:
            assert isinstance(out, torch.Tensor)  # stages exchange tensors only
            out = stage(out, **batch)
        ref = whole(**batch)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    # every parameter of the whole model lives on exactly one stage (the tied copy aside)
    held = [_global_name(k, st) for st in stages for k in st.state_dict()]
    copy = tied and not stages[-1].plan.embedding
    expected = sorted(list(state) + (["text_decoder.output_layer.weight"] if copy else []))
    assert sorted(held) == expected


def test_chained_stages_backpropagate_like_the_whole_model():
    torch.set_num_threads(1)
    config = tiny_config_dict()
    torch.manual_seed(0)
    whole = build_model(config, device="cpu")
    state = whole.state_dict()
    vit, llm = [2, 2], [0, 4]
    stages = []
    for s in range(2):
        stage = build_model(config, vit_pp_layers=vit, llm_pp_layers=llm, pp_rank=s, device="meta")
        stage.load_state_dict({k: v.clone() for k, v in _stage_state(state, stage).items()}, assign=True)
        stages.append(stage)
    batch = make_inputs(config, [[("text", 3), ("image", (1, 8, 8)), ("text", 4)]])
    stages[1](stages[0](**batch), **batch).square().mean().backward()
    whole(**batch).square().mean().backward()
    grads = dict(whole.named_parameters())
    for stage in stages:
        for name, p in stage.named_parameters():
            torch.testing.assert_close(p.grad, grads[_global_name(name, stage)].grad, atol=1e-6, rtol=1e-5)


def test_placement_of_embeddings_and_heads():
    config = tiny_config_dict()
    s0, s1, s2 = (build_model(config, vit_pp_layers=[1, 3, 0], llm_pp_layers=[0, 0, 4], pp_rank=r) for r in range(3))
    names0, names1, names2 = (set(s.state_dict()) for s in (s0, s1, s2))
    assert "image_encoder.encoder.patch_embed.proj.weight" in names0
    assert not any(n.startswith("image_encoder.projector") for n in names0)
    assert "image_encoder.projector.layernorm.weight" in names1
    assert "image_encoder.encoder.blocks.layers.2.input_layernorm.weight" in names1  # numbered from 0
    assert "image_encoder.encoder.blocks.layers.3.input_layernorm.weight" not in names1
    assert {"text_decoder.embedding.word_embeddings.weight", "text_decoder.decoder.final_layernorm.weight",
            "text_decoder.output_layer.weight"} <= names2
    assert all(p.device.type == "meta" for p in s2.parameters())  # nothing materialised


@pytest.mark.parametrize("vit,llm,match", [
    ([3, 1], [1, 3], "vision encoder must finish first"),
    ([4, 0], [1, 2], "sums to 3"),
    ([4, 0, 0], [1, 3], "one count per stage"),
])
def test_invalid_layouts_are_errors(vit, llm, match):
    with pytest.raises(ConfigError, match=match):
        build_model(tiny_config_dict(), vit_pp_layers=vit, llm_pp_layers=llm, pp_rank=0)
