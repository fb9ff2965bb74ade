"""InternVL3 conversions, both checkpoint layouts, bit for bit.

Two tiny models with the *shape of problem* of the seed's command lines:
- "8B": tp 1, pp 4 with ``[[1,2,2,1]]`` / ``[[4,0,0,0]]`` (the seed's ``[[6,8,8,6]]`` / ``[[24,0,0,0]]``);
- "78B": InternViT-6B style (RMSNorm, q/k norms over all heads) with 10 ViT heads and a 301-row
  vocabulary at tp 8 (InternViT-6B's 25 heads and 151674 rows do not divide by 8 either), pp 2
  with ``[[2,2]]`` / ``[[3,0]]`` (the seed's ``[[40,40]]`` / ``[[45,0]]``).
Each exists in the ``-hf`` layout (saved by transformers) and in the original remote-code layout
(made from it by ``remote_fixture``: transformers' renames backwards).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from mm_convert.cli import main
from mm_core.checkpoint import api
from mm_core.errors import ConfigError
from mm_core.testing.hf_files import assert_same_hf_dirs, read_safetensors_dir

_spec = importlib.util.spec_from_file_location("internvl_remote_fixture", Path(__file__).with_name("remote_fixture.py"))
remote = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(remote)

CONV = "InternVLConverter"
SEED = {  # model -> (tp, vit_pp_layers, llm_pp_layers), as the seed writes them (nested: one chunk)
    "8b": (1, [[4, 0, 0, 0]], [[1, 2, 2, 1]]),
    "78b": (8, [[3, 0]], [[2, 2]]),
}
VIT_HEADS_78B, HEAD_DIM_78B, VOCAB = 10, 4, 301


# as InternVL3's files (both layouts) have it: dynamic NTK scaling, inert below max_position_embeddings
ROPE = {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}, "max_position_embeddings": 32768}


def _save(path: Path, name: str) -> Path:
    from mm_internvl.tiny import save_tiny_model

    if name == "8b":
        return save_tiny_model(path, vision_depth=4, text_layers=6, vocab_size=VOCAB, text=ROPE)
    return save_tiny_model(path, seed=1, vision_depth=3, text_layers=4, qk_norm=True, vocab_size=VOCAB,
                           vision={"hidden_size": VIT_HEADS_78B * HEAD_DIM_78B, "num_attention_heads": VIT_HEADS_78B,
                                   "intermediate_size": 80},
                           text={"num_attention_heads": 8, "num_key_value_heads": 8, **ROPE})


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """``(model, layout) -> HF dir``."""
    root = tmp_path_factory.mktemp("internvl_convert")
    out = {}
    with torch.random.fork_rng(devices=[]):
        for name in SEED:
            out[(name, "hf")] = _save(root / f"{name}_hf", name)
            out[(name, "remote_code")] = remote.write_remote_copy(out[(name, "hf")], root / f"{name}_remote")
    return out


def _flags(tp: int, vit, llm) -> list[str]:
    return ["--cfg.parallel_config.llm_pp_layers", json.dumps(llm).replace(" ", ""),
            "--cfg.parallel_config.vit_pp_layers", json.dumps(vit).replace(" ", ""),
            "--cfg.parallel_config.tp_size", str(tp)]


@pytest.mark.parametrize("layout", ["hf", "remote_code"])
@pytest.mark.parametrize("model", list(SEED))
def test_seed_command_lines_convert_back_bit_exact(dirs, model, layout, tmp_path):
    """hf_to_mm with the seed's flags (``--cfg.trust_remote_code True`` included), resplit to one
    process and back to the seed's layout, mm_to_hf from both: the original tensors and config.json."""
    hf = dirs[(model, layout)]
    tp, vit, llm = SEED[model]
    mm = tmp_path / "mm"
    assert main([CONV, "hf_to_mm", "--cfg.mm_dir", str(mm), "--cfg.hf_config.hf_dir", str(hf), *_flags(tp, vit, llm),
                 "--cfg.trust_remote_code", "True"]) == 0
    recorded = json.loads((mm / "mm_layout.json").read_text())
    assert (recorded["tp_size"], recorded["vit_pp_layers"], recorded["llm_pp_layers"]) == (tp, vit, llm)
    assert (mm / "modeling_internvl_chat.py").is_file() == (layout == "remote_code")  # copied, never imported
    assert main([CONV, "resplit", "--cfg.mm_dir", str(mm), "--cfg.save_dir", str(tmp_path / "one"),
                 "--cfg.parallel_config.tp_size", "1"]) == 0
    assert main([CONV, "resplit", "--cfg.mm_dir", str(tmp_path / "one"), "--cfg.save_dir", str(tmp_path / "again"),
                 *_flags(tp, vit, llm)]) == 0
    for i, src in enumerate((mm, tmp_path / "one", tmp_path / "again")):
        back = tmp_path / f"back{i}"
        assert main([CONV, "mm_to_hf", "--cfg.mm_dir", str(src), "--cfg.save_hf_dir", str(back),
                     "--cfg.trust_remote_code", "True"]) == 0
        assert_same_hf_dirs(hf, back)


def test_uneven_vit_heads_and_vocabulary_at_tp8(dirs):
    """Rank r's ViT pieces hold whole heads, the first ``heads mod 8`` ranks one more: q, k and v rows,
    the projection's input columns and the q/k norm weights of the same heads; the vocabulary's first
    ``V mod 8`` ranks take one row more."""
    hf = dirs[("78b", "hf")]
    full = api.hf_to_mm_rank(CONV, hf)
    heads = [2, 2, 1, 1, 1, 1, 1, 1]
    d = HEAD_DIM_78B
    layer = "image_encoder.encoder.encoder.layers.0.self_attention."
    for r in range(8):
        piece = api.hf_to_mm_rank(CONV, hf, tp_size=8, tp_rank=r)
        first, n = sum(heads[:r]) * d, heads[r] * d
        q, k, v = full[layer + "linear_qkv.weight"].chunk(3)
        want = torch.cat([x[first:first + n] for x in (q, k, v)])
        assert torch.equal(piece[layer + "linear_qkv.weight"], want)
        assert torch.equal(piece[layer + "linear_proj.weight"], full[layer + "linear_proj.weight"][:, first:first + n])
        for norm in ("q_layernorm", "k_layernorm"):
            assert torch.equal(piece[layer + f"{norm}.weight"], full[layer + f"{norm}.weight"][first:first + n])
        rows = piece["text_decoder.embedding.word_embeddings.weight"].shape[0]
        assert rows == (38 if r < VOCAB % 8 else 37)


@pytest.mark.parametrize("model", list(SEED))
def test_both_layouts_give_the_same_mm_checkpoint(dirs, model):
    tp, vit, llm = SEED[model]
    for r in range(tp):
        a = api.hf_to_mm_rank(CONV, dirs[(model, "hf")], tp_size=tp, tp_rank=r, vit_pp_layers=vit,
                              llm_pp_layers=llm, pp_rank=1)
        b = api.hf_to_mm_rank(CONV, dirs[(model, "remote_code")], tp_size=tp, tp_rank=r, vit_pp_layers=vit,
                              llm_pp_layers=llm, pp_rank=1)
        for x, y in zip(a, b):
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _same_tensors(a: Path, b: Path) -> None:
    x, y = read_safetensors_dir(a), read_safetensors_dir(b)
    assert x.keys() == y.keys(), sorted(set(x) ^ set(y))[:6]
    for k in x:
        assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k


@pytest.mark.parametrize("source,target", [("remote_code", "hf"), ("hf", "remote_code")])
def test_mm_to_hf_writes_the_chosen_layout(dirs, source, target, tmp_path):
    from mm_internvl.config import parse_config

    tp, vit, llm = SEED["78b"]
    mm = tmp_path / "mm"
    assert main([CONV, "hf_to_mm", "--cfg.mm_dir", str(mm), "--cfg.hf_config.hf_dir", str(dirs[("78b", source)]),
                 *_flags(tp, vit, llm)]) == 0
    assert main([CONV, "mm_to_hf", "--cfg.mm_dir", str(mm), "--cfg.save_hf_dir", str(tmp_path / "out"),
                 "--cfg.hf_layout", target]) == 0
    want = dirs[("78b", target)]
    _same_tensors(want, tmp_path / "out")
    assert parse_config(tmp_path / "out") == parse_config(want)
    # and the written layout converts back to itself
    assert main([CONV, "hf_to_mm", "--cfg.mm_dir", str(tmp_path / "mm2"), "--cfg.hf_config.hf_dir",
                 str(tmp_path / "out")]) == 0
    assert main([CONV, "mm_to_hf", "--cfg.mm_dir", str(tmp_path / "mm2"), "--cfg.save_hf_dir",
                 str(tmp_path / "back")]) == 0
    assert_same_hf_dirs(tmp_path / "out", tmp_path / "back")


@pytest.mark.parametrize("layout", ["hf", "remote_code"])
def test_dcp_round_trip_and_layout_choice(dirs, layout, tmp_path):
    hf = dirs[("8b", layout)]
    assert main([CONV, "hf_to_dcp", "--hf_dir", str(hf), "--save_dir", str(tmp_path / "dcp")]) == 0
    assert main([CONV, "dcp_to_hf", "--hf_dir", str(hf), "--dcp_dir", str(tmp_path / "dcp"),
                 "--save_dir", str(tmp_path / "back")]) == 0
    assert_same_hf_dirs(hf, tmp_path / "back")
    other = "hf" if layout == "remote_code" else "remote_code"
    assert main([CONV, "dcp_to_hf", "--hf_dir", str(hf), "--dcp_dir", str(tmp_path / "dcp"),
                 "--save_dir", str(tmp_path / "other"), "--hf_layout", other]) == 0
    _same_tensors(dirs[("8b", other)], tmp_path / "other")


def test_remote_code_checkpoint_loads_as_the_same_model(dirs):
    """Our model built from the remote-code dir (config.json read, no code run) equals the -hf one's."""
    from mm_core.nn.pretrained import load_pretrained

    a = load_pretrained(dirs[("78b", "hf")], dtype=torch.float32).state_dict()
    b = load_pretrained(dirs[("78b", "remote_code")], dtype=torch.float32).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_config_mapping_both_ways(dirs):
    from mm_internvl.config import parse_config
    from mm_internvl.remote_layout import hf_config_from_remote, layout_of, remote_config_from_hf

    hf = json.loads((dirs[("78b", "hf")] / "config.json").read_text())
    rc = json.loads((dirs[("78b", "remote_code")] / "config.json").read_text())
    assert (layout_of(hf), layout_of(rc)) == ("hf", "remote_code")
    # <IMG_CONTEXT> comes from the remote dir's added_tokens.json; without the files, InternVL3's id
    assert parse_config(dirs[("78b", "remote_code")]) == parse_config(hf)
    assert parse_config(hf_config_from_remote(rc, image_token_id=300)) == parse_config(hf)
    assert parse_config(rc).image_token_id == 151667
    assert parse_config(remote_config_from_hf(hf)) == parse_config(hf)


def test_refusals_name_the_field(dirs, tmp_path):
    from mm_internvl.remote_layout import hf_config_from_remote

    rc = json.loads((dirs[("8b", "remote_code")] / "config.json").read_text())
    with pytest.raises(ConfigError, match="ps_version 'v1'"):
        hf_config_from_remote({**rc, "ps_version": "v1"})
    with pytest.raises(ConfigError, match="llm_config is 'internlm2'"):
        hf_config_from_remote({**rc, "llm_config": {**rc["llm_config"], "model_type": "internlm2",
                                                   "architectures": ["InternLM2ForCausalLM"]}})
    assert main([CONV, "hf_to_mm", "--cfg.mm_dir", str(tmp_path / "mm"), "--cfg.hf_config.hf_dir",
                 str(dirs[("8b", "hf")])]) == 0
    assert main([CONV, "mm_to_hf", "--cfg.mm_dir", str(tmp_path / "mm"), "--cfg.save_hf_dir", str(tmp_path / "o"),
                 "--cfg.hf_layout", "megatron"]) == 2  # not a layout: refused while parsing the flags


def test_internvl3_config_fields_dynamic_rope_and_moe_leftovers(dirs, tmp_path):
    """OpenGVLab's files carry rope_type 'dynamic' (factor 2) and unused MoE fields: read as the model
    they describe; the logits equal transformers' (whose dynamic rotary is the default below
    max_position_embeddings), and a position at that limit is refused by name."""
    from transformers import InternVLForConditionalGeneration

    from mm_core.nn.pretrained import load_pretrained
    from mm_internvl.config import parse_config
    from mm_internvl.tiny import make_inputs

    rc = json.loads((dirs[("8b", "remote_code")] / "config.json").read_text())
    assert rc["llm_config"]["rope_scaling"]["rope_type"] == "dynamic"
    assert parse_config(dirs[("8b", "remote_code")]).rope_limit == 32768
    hf = tmp_path / "hf"
    assert main([CONV, "hf_to_mm", "--cfg.mm_dir", str(tmp_path / "mm"), "--cfg.hf_config.hf_dir",
                 str(dirs[("8b", "remote_code")])]) == 0
    assert main([CONV, "mm_to_hf", "--cfg.mm_dir", str(tmp_path / "mm"), "--cfg.save_hf_dir", str(hf),
                 "--cfg.hf_layout", "hf"]) == 0
    config = json.loads((hf / "config.json").read_text())
    config["text_config"]["max_position_embeddings"] = 12  # the limit within reach of a tiny batch
    (hf / "config.json").write_text(json.dumps(config))
    ref = InternVLForConditionalGeneration.from_pretrained(hf, dtype=torch.float32).eval()
    ours = load_pretrained(hf, dtype=torch.float32).eval()
    batch = make_inputs(config, [[("text", 3), ("image", 1), ("text", 4)]], seed=3)  # 11 tokens
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch), ref(**batch).logits, rtol=1e-4, atol=1e-4)
        with pytest.raises(ConfigError, match="max_position_embeddings 12"):
            ours(**make_inputs(config, [[("text", 13)]], seed=4))


@pytest.mark.parametrize("model", ["8b", "78b"])
def test_seed_layouts_plan_at_the_real_sizes(model):
    """The seed's command lines on the published shapes (planned on shapes only, nothing is built):
    InternViT-6B's 25 heads and the 151674-row vocabulary at tp 8, rank by rank."""
    from mm_internvl.bench_shapes import internvl3_8b_config, internvl3_78b_config, internvl3_shapes
    from mm_internvl.convert import InternVLConverter

    conv = InternVLConverter()
    if model == "8b":
        cfg, tp, vit, llm = internvl3_8b_config(), 1, [[24, 0, 0, 0]], [[6, 8, 8, 6]]
    else:
        cfg, tp, vit, llm = internvl3_78b_config(), 8, [[45, 0]], [[40, 40]]
    shapes = internvl3_shapes(cfg)
    plan = conv.plan(cfg, conv.placement(cfg, tp, {"vit": vit, "llm": llm}))
    assert plan.hf_keys() == set(shapes)
    by_key = {it.mm_key: it for it in plan.items}
    ranks = {k: it.tp.split_shapes(it.rule.op.forward_shape([shapes[h] for h in it.hf_keys]), tp)
             for k, it in by_key.items()}
    assert ranks["text_decoder.embedding.word_embeddings.weight"] == [
        (151674 // tp + (1 if r < 151674 % tp else 0), 3584 if model == "8b" else 8192) for r in range(tp)]
    if model == "78b":
        heads = [4, 3, 3, 3, 3, 3, 3, 3]  # 25 heads of 128
        attn = "image_encoder.encoder.encoder.layers.44.self_attention."
        assert [s[0] for s in ranks[attn + "linear_qkv.weight"]] == [3 * h * 128 for h in heads]
        assert [s[1] for s in ranks[attn + "linear_proj.weight"]] == [h * 128 for h in heads]
        assert [s[0] for s in ranks[attn + "q_layernorm.weight"]] == [h * 128 for h in heads]
        assert {it.stage for it in plan.items if it.rule.module == "vit"} == {0}
        assert max(it.stage for it in plan.items) == 1
    else:
        assert {it.stage for it in plan.items if it.rule.module == "llm" and it.layer is not None} == {0, 1, 2, 3}
