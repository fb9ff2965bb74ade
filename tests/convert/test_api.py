"""The in-process API: one rank's state streamed from HF equals that rank's file of a conversion."""

from __future__ import annotations

import pytest
import torch

from mm_convert import engine
from mm_convert.config import HFConfigSection, HfToMmConfig, ParallelSection
from mm_core.checkpoint import api
from mm_core.checkpoint.errors import ConfigError

LAYOUTS = [
    (1, None, None),
    (2, [3, 1, 0], [0, 1, 3]),  # vision spans two stages, the LLM starts after stage 0
    (2, [[2, 2], [0, 0]], [[0, 1], [1, 2]]),  # virtual pipeline chunks
]


@pytest.mark.parametrize("tp,vit,llm", LAYOUTS)
def test_rank_state_equals_written_rank_file(qwen_hf, tmp_path, tp, vit, llm):
    conv = api.get_converter("Qwen2_5_VLConverter")
    mm = tmp_path / "mm"
    engine.hf_to_mm(conv, HfToMmConfig(mm_dir=str(mm), hf_config=HFConfigSection(str(qwen_hf)),
                                       parallel_config=ParallelSection(tp, vit, llm)), progress=False)
    layout = api.read_mm_layout(mm)
    assert (layout.tp_size, layout.vit_pp_layers, layout.llm_pp_layers) == (tp, vit or [4], llm or [4])
    for pp_rank in range(layout.pp_size):
        for tp_rank in range(tp):
            streamed = api.hf_to_mm_rank("Qwen2_5_VLConverter", qwen_hf, tp_size=tp, tp_rank=tp_rank,
                                         vit_pp_layers=vit, llm_pp_layers=llm, pp_rank=pp_rank)
            saved, lay = api.read_mm_rank(mm, tp_rank=tp_rank, pp_rank=pp_rank)
            assert lay.pp_size == layout.pp_size
            chunks_a = streamed if isinstance(streamed, list) else [streamed]
            chunks_b = saved if isinstance(saved, list) else [saved]
            assert len(chunks_a) == len(chunks_b) == layout.vpp_size
            for a, b in zip(chunks_a, chunks_b):
                assert a.keys() == b.keys()
                for k in a:
                    assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_whole_model_names_match_the_hf_tensors(qwen_untied):
    from safetensors.torch import load_file

    hf = load_file(qwen_untied / "model.safetensors")
    sd = api.hf_to_mm_rank("Qwen2_5_VLConverter", qwen_untied)
    assert torch.equal(sd["text_decoder.embedding.word_embeddings.weight"], hf["model.embed_tokens.weight"])
    assert torch.equal(sd["text_decoder.output_layer.weight"], hf["lm_head.weight"])
    assert torch.equal(sd["text_decoder.decoder.layers.3.pre_mlp_layernorm.weight"],
                       hf["model.layers.3.post_attention_layernorm.weight"])
    fc1 = sd["image_encoder.encoder.blocks.layers.2.mlp.linear_fc1.weight"]
    assert torch.equal(fc1, torch.cat([hf["visual.blocks.2.mlp.gate_proj.weight"], hf["visual.blocks.2.mlp.up_proj.weight"]]))
    assert len(sd) == len(hf) - 2 * 4 - 5 * 4  # per vision block gate+up (x2) fused; per LLM layer 6 qkv -> 2, gate+up -> 1


def test_tied_model_has_no_output_layer_on_one_stage(qwen_tied):
    sd = api.hf_to_mm_rank("Qwen2_5_VLConverter", qwen_tied)
    assert "text_decoder.output_layer.weight" not in sd
    last = api.hf_to_mm_rank("Qwen2_5_VLConverter", qwen_tied, vit_pp_layers=[4, 0], llm_pp_layers=[2, 2], pp_rank=1)
    first = api.hf_to_mm_rank("Qwen2_5_VLConverter", qwen_tied, vit_pp_layers=[4, 0], llm_pp_layers=[2, 2], pp_rank=0)
    assert torch.equal(last["text_decoder.output_layer.weight"], first["text_decoder.embedding.word_embeddings.weight"])
    assert last["text_decoder.output_layer.weight"].dtype == torch.bfloat16


def test_rank_out_of_range(qwen_untied):
    with pytest.raises(ConfigError, match="tp_rank 2"):
        api.hf_to_mm_rank("Qwen2_5_VLConverter", qwen_untied, tp_size=2, tp_rank=2)
    with pytest.raises(ConfigError, match="pp_rank 3"):
        api.hf_to_mm_rank("Qwen2_5_VLConverter", qwen_untied, llm_pp_layers=[0, 4], vit_pp_layers=[4, 0], pp_rank=3)
