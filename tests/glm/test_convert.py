"""GlmConverter through the seed's command lines, scaled to a tiny GLM-4.1V: exact round trips.

The 9B layouts (ViT 24 layers, LLM 40) scaled to 4 / 8 layers: pp1 ``[[40]]``/``[[24]]`` ->
``[[8]]``/``[[4]]``; pp4 ``[[5,12,12,11]]``/``[[24,0,0,0]]`` -> ``[[1,3,2,2]]``/``[[4,0,0,0]]``;
the refused ``[22,2,0,0]`` (vision still running on stage 1 while the LLM starts on stage 0) ->
``[3,1,0,0]``. Every round trip compares key sets, dtypes and ``torch.equal`` on every tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from mm_convert.cli import main
from mm_core.checkpoint import api

CONV = "GlmConverter"
PP1 = ("[[8]]", "[[4]]")  # llm_pp_layers, vit_pp_layers
PP4 = ("[[1,3,2,2]]", "[[4,0,0,0]]")


@pytest.fixture(scope="module")
def glm_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mm_glm.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("glm_hf"), vision_depth=4, text_layers=8, hidden=64)


def load_dir(d: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(f, "pt") as s:
            out.update({k: s.get_tensor(k) for k in s.keys()})
    return out


def assert_same(a: Path, b: Path) -> None:
    x, y = load_dir(a), load_dir(b)
    assert x.keys() == y.keys(), sorted(set(x) ^ set(y))
    for k in x:
        assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k


def hf_to_mm(hf: Path, mm: Path, llm: str, vit: str, tp: int = 1) -> int:
    """The seed's command line, as users type it."""
    return main([CONV, "hf_to_mm", "--cfg.mm_dir", str(mm), "--cfg.hf_config.hf_dir", str(hf),
                 "--cfg.parallel_config.llm_pp_layers", llm, "--cfg.parallel_config.vit_pp_layers", vit,
                 "--cfg.parallel_config.tp_size", str(tp), "--cfg.trust_remote_code", "True"])


def mm_to_hf(mm: Path, out: Path, hf: Path) -> int:
    return main([CONV, "mm_to_hf", "--cfg.mm_dir", str(mm), "--cfg.save_hf_dir", str(out),
                 "--cfg.hf_config.hf_dir", str(hf)])


@pytest.mark.parametrize("layout", [PP1, PP4], ids=["pp1", "pp4"])
def test_seed_command_lines_round_trip(glm_hf: Path, tmp_path: Path, layout: tuple[str, str]) -> None:
    assert hf_to_mm(glm_hf, tmp_path / "mm", *layout) == 0
    assert json.loads((tmp_path / "mm" / "mm_layout.json").read_text())["llm_pp_layers"] == json.loads(layout[0])
    assert mm_to_hf(tmp_path / "mm", tmp_path / "back", glm_hf) == 0
    assert_same(glm_hf, tmp_path / "back")


def test_pp4_places_glm_stem_and_tail_pieces(glm_hf: Path, tmp_path: Path) -> None:
    """Stem (patch embed, post-conv norm, position table) on the ViT's first stage, tail (final norm,
    downsample, merger) on its last, which here is stage 1 of 4; layers numbered from 0 per stage."""
    assert hf_to_mm(glm_hf, tmp_path / "mm", "[0,0,4,4]", "[2,2,0,0]") == 0
    stages = [api.read_mm_rank(tmp_path / "mm", pp_rank=p)[0] for p in range(4)]
    enc = "image_encoder.encoder."
    stem = {enc + k for k in ("patch_embed.proj.weight", "patch_embed.proj.bias", "post_conv_layernorm.weight",
                              "embeddings.position_embedding.weight")}
    tail = {enc + "blocks.final_layernorm.weight", enc + "downsample.weight", enc + "downsample.bias",
            "image_encoder.projector.proj.weight", "image_encoder.projector.post_projection_norm.weight",
            "image_encoder.projector.gate_proj.weight", "image_encoder.projector.down_proj.weight"}
    assert stem <= set(stages[0]) and not stem & set(stages[1])
    assert tail <= set(stages[1]) and not tail & set(stages[0])
    for s in (0, 1):
        assert {k.split(".")[4] for k in stages[s] if ".blocks.layers." in k} == {"0", "1"}
    assert "text_decoder.embedding.word_embeddings.weight" in stages[2]
    assert "text_decoder.decoder.final_layernorm.weight" in stages[3] and "text_decoder.output_layer.weight" in stages[3]
    assert {k.split(".")[3] for k in stages[3] if "decoder.layers." in k} == {"0", "1", "2", "3"}
    layer = "text_decoder.decoder.layers.0."
    assert {layer + n + ".weight" for n in ("post_self_attn_layernorm", "post_mlp_layernorm")} <= set(stages[2])


def test_vision_first_violation_is_refused(glm_hf: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert hf_to_mm(glm_hf, tmp_path / "mm", "[1,3,2,2]", "[3,1,0,0]") == 1
    err = capsys.readouterr().err
    assert "vision encoder must finish first" in err and "vit_pp_layers" in err and "Traceback" not in err
    assert not (tmp_path / "mm" / "release").exists()


def test_tp_larger_than_kv_heads_is_refused(glm_hf: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert hf_to_mm(glm_hf, tmp_path / "mm", *PP1, tp=4) == 1
    assert "does not divide text_config.num_key_value_heads 2" in capsys.readouterr().err


def test_tp2_vit_qkv_keeps_q_k_v_contiguous(glm_hf: Path, tmp_path: Path) -> None:
    """Rank r's ViT ``qkv`` is ``[Q_r; K_r; V_r]`` (its heads of each third, reference order), and the
    merger's gate/up are column pieces, its down a row piece."""
    assert hf_to_mm(glm_hf, tmp_path / "mm", "[8]", "[4]", tp=2) == 0
    hf = load_dir(glm_hf)
    qkv = hf["model.visual.blocks.1.attn.qkv.weight"]
    q, k, v = qkv.chunk(3)
    for r in range(2):
        state = api.read_mm_rank(tmp_path / "mm", tp_rank=r)[0]
        want = torch.cat([x.chunk(2)[r] for x in (q, k, v)])
        assert torch.equal(state["image_encoder.encoder.blocks.layers.1.self_attention.qkv.weight"], want)
        assert torch.equal(state["image_encoder.projector.gate_proj.weight"],
                           hf["model.visual.merger.gate_proj.weight"].chunk(2)[r])
        assert torch.equal(state["image_encoder.projector.down_proj.weight"],
                           hf["model.visual.merger.down_proj.weight"].chunk(2, dim=1)[r])
        assert torch.equal(state["image_encoder.projector.proj.weight"], hf["model.visual.merger.proj.weight"])


def test_resplit_pp4_to_tp2_pp2_and_back(glm_hf: Path, tmp_path: Path) -> None:
    assert hf_to_mm(glm_hf, tmp_path / "mm", *PP4) == 0
    assert main([CONV, "resplit", "--cfg.mm_dir", str(tmp_path / "mm"), "--cfg.save_dir", str(tmp_path / "re"),
                 "--cfg.parallel_config.tp_size", "2", "--cfg.parallel_config.llm_pp_layers", "[2,6]",
                 "--cfg.parallel_config.vit_pp_layers", "[4,0]"]) == 0
    assert api.read_mm_layout(tmp_path / "re").tp_size == 2
    assert mm_to_hf(tmp_path / "re", tmp_path / "back", glm_hf) == 0
    assert_same(glm_hf, tmp_path / "back")


def test_dcp_both_ways_with_flat_flags(glm_hf: Path, tmp_path: Path) -> None:
    assert main([CONV, "hf_to_dcp", "--hf_dir", str(glm_hf), "--save_dir", str(tmp_path / "dcp")]) == 0
    assert (tmp_path / "dcp" / "latest_checkpointed_iteration.txt").read_text().strip() == "release"
    assert main([CONV, "dcp_to_hf", "--hf_dir", str(glm_hf), "--dcp_dir", str(tmp_path / "dcp" / "release"),
                 "--save_dir", str(tmp_path / "back")]) == 0
    assert_same(glm_hf, tmp_path / "back")
