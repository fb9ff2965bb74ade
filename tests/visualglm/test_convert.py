"""VisualGLMConverter on tiny SAT (``.pt``) and HF remote-code (``.bin``) checkpoints built here:
each converts to mm and back bit-exact, into the other layout, and a SAT copy's q/k/v order is told
apart by the probe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mm_core.testing.convert_checks import verb_config
from mm_visualglm import formats
from mm_visualglm.convert import VisualGLMConverter
from mm_visualglm.sources import mm_to_source
from mm_visualglm.tiny import make_inputs, random_mm_state, tiny_config_dict


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("vglm")
    config = tiny_config_dict(qformer_layers=2)
    state = random_mm_state(config, seed=3)
    sat = {**mm_to_source(state, config, "sat"), **formats.make_unused(config, "sat", torch.float32)}
    sat["transformer.position_embeddings.weight"].normal_()  # unused, but it must come back as it was
    formats.write_sat(root / "sat", sat, formats.sat_config_of_hf(config))
    hf = {**mm_to_source(state, config, "hf"), **formats.make_unused(config, "hf", torch.float32)}
    (root / "hf").mkdir()
    formats.write_hf_bin(root / "hf", hf, max_shard_bytes=200_000)  # several shards
    (root / "hf" / "config.json").write_text(json.dumps(config))
    return {"root": root, "config": config, "state": state, "sat": sat, "hf": hf}


def to_mm(src: Path, out: Path, tp: int = 1, vit=None, llm=None, **kw) -> Path:
    conv = VisualGLMConverter()
    conv.hf_to_mm(verb_config(conv.hf_to_mm, {"mm_dir": str(out), "hf_config": {"hf_dir": str(src)},
                                              "parallel_config": {"tp_size": tp, "vit_pp_layers": vit,
                                                                  "llm_pp_layers": llm}, **kw}))
    return out


def from_mm(mm: Path, out: Path, layout: str | None = None) -> Path:
    conv = VisualGLMConverter()
    conv.mm_to_hf(verb_config(conv.mm_to_hf, {"mm_dir": str(mm), "save_hf_dir": str(out), "layout": layout}))
    return out


def assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want), (sorted(set(got) ^ set(want)))[:6]
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


def test_sat_round_trip_is_bit_exact(tiny, tmp_path: Path) -> None:
    mm = to_mm(tiny["root"] / "sat", tmp_path / "mm", tp=2, qkv_order="contiguous")
    back = from_mm(mm, tmp_path / "back")
    state, model_config = formats.read_sat(back)
    assert_same(state, tiny["sat"])
    assert model_config == json.loads((tiny["root"] / "sat" / "model_config.json").read_text())


def test_hf_bin_round_trip_is_bit_exact(tiny, tmp_path: Path) -> None:
    mm = to_mm(tiny["root"] / "hf", tmp_path / "mm", vit=[1, 1], llm=[0, 2])
    back = from_mm(mm, tmp_path / "back")
    state, config = formats.read_hf_bin(back)
    assert_same(state, tiny["hf"])
    assert config == tiny["config"]


def test_hf_qkv_rows_are_sat_rows_per_head(tiny) -> None:
    """The reference's statement of the two orders: SAT [3, H, D, in] permuted to [H, 3, D, in] is HF."""
    heads, d = tiny["config"]["num_attention_heads"], tiny["config"]["hidden_size"] // tiny["config"]["num_attention_heads"]
    for p in ("weight", "bias"):
        key = f"transformer.layers.1.attention.query_key_value.{p}"
        sat = tiny["sat"][key]
        assert torch.equal(tiny["hf"][key], sat.view(3, heads, d, -1).transpose(0, 1).reshape(sat.shape))


def test_sat_and_hf_convert_into_each_other(tiny, tmp_path: Path) -> None:
    hf = from_mm(to_mm(tiny["root"] / "sat", tmp_path / "mm1", qkv_order="contiguous"), tmp_path / "hf", "hf_bin")
    assert_same(formats.read_hf_bin(hf)[0], tiny["hf"])
    sat = from_mm(to_mm(tiny["root"] / "hf", tmp_path / "mm2"), tmp_path / "sat", "sat")
    state, model_config = formats.read_sat(sat)
    weights, unused = formats.split_unused(state, "sat")
    assert_same(weights, formats.split_unused(tiny["sat"], "sat")[0])
    assert set(unused) == {"transformer.position_embeddings.weight", "mixins.chatglm-attn.rotary_emb.inv_freq"}
    assert formats.hf_config_of_sat(model_config) == tiny["config"]


def test_mm_dirs_from_both_layouts_give_the_same_logits(tiny, tmp_path: Path) -> None:
    from mm_core.nn.pretrained import load_pretrained

    batch = make_inputs(tiny["config"], [(1, 4, 3)], seed=1)
    out = []
    for name in ("sat", "hf"):
        kw = {"qkv_order": "contiguous"} if name == "sat" else {}
        model = load_pretrained(to_mm(tiny["root"] / name, tmp_path / name, **kw), dtype=torch.float32).eval()
        with torch.no_grad():
            out.append(model(**batch))
    assert torch.equal(out[0], out[1])


def test_parts_load_alone(tiny, tmp_path: Path) -> None:
    """vit / qformer (+ glm_proj) / glm files, each loaded strictly into its module built alone."""
    from safetensors.torch import load_file

    from mm_visualglm.config import parse_config
    from mm_visualglm.text import ChatGLMDecoder
    from mm_visualglm.vision import EvaViT, Projector

    mm = to_mm(tiny["root"] / "hf", tmp_path / "mm", tp=2)
    from mm_convert.cli import main as convert

    assert convert(["VisualGLMConverter", "export_parts", "--mm_dir", str(mm), "--save_dir", str(tmp_path / "parts")]) == 0
    cfg = parse_config(tmp_path / "parts" / "config.json")
    modules = {"vit": EvaViT(cfg.vision, cfg.vision.depth, with_stem=True, with_tail=True),
               "qformer": Projector(cfg),
               "glm": ChatGLMDecoder(cfg.text, cfg.text.num_layers, with_embedding=True, with_head=True)}
    prefixes = {"vit": "image_encoder.encoder.", "qformer": "image_encoder.projector.", "glm": "text_decoder."}
    for name, module in modules.items():
        part = load_file(str(tmp_path / "parts" / f"{name}.safetensors"))
        module.load_state_dict(part, strict=True)
        want = {k[len(prefixes[name]):]: v for k, v in tiny["state"].items() if k.startswith(prefixes[name])}
        assert_same(part, want)


def trained_state(config: dict, ids: list[int], steps: int = 40) -> dict[str, torch.Tensor]:
    """A tiny model that has learnt the probe text (its LM then predicts it far better in its own q/k/v order)."""
    from mm_visualglm.model import build_model

    torch.manual_seed(0)
    model = build_model(config, device="cpu")
    opt = torch.optim.Adam(model.text_decoder.parameters(), lr=1e-2)
    x = torch.tensor([ids])
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(input_ids=x)[0, :-1], x[0, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("order", ["interleaved", "contiguous"])
def test_probe_tells_the_qkv_order_of_a_sat_copy(order: str, tmp_path: Path, capsys) -> None:
    config = tiny_config_dict(qformer_layers=2)
    ids = torch.randint(5, 140, (24,), generator=torch.Generator().manual_seed(1)).tolist()
    state = trained_state(config, ids)
    sat = {**mm_to_source(state, config, "sat", qkv_order=order), **formats.make_unused(config, "sat", torch.float32)}
    formats.write_sat(tmp_path / "sat", sat, formats.sat_config_of_hf(config))
    mm = to_mm(tmp_path / "sat", tmp_path / "mm", probe_ids=ids)
    assert f"q/k/v rows are {order}" in capsys.readouterr().out
    assert json.loads((mm / "mm_layout.json").read_text())["extra"]["qkv_order"] == order
    back = from_mm(mm, tmp_path / "back")  # written back in the order it was found in
    assert_same(formats.read_sat(back)[0], sat)


def test_default_probe_reads_the_directory_tokenizer(tmp_path: Path, capsys) -> None:
    """Without --cfg.probe_ids the probe is a fixed sentence through the SAT directory's ice_text.model."""
    from mm_visualglm.qkv_probe import PROBE_TEXT
    from mm_visualglm.testing_tokenizer import save_tiny_tokenizer, tokenizer_ids
    from mm_visualglm.tokenizer import ChatGLMTokenizer

    file = save_tiny_tokenizer(tmp_path / "sat")
    config = tiny_config_dict(qformer_layers=2, ids=tokenizer_ids(file))
    state = trained_state(config, ChatGLMTokenizer(file).encode(PROBE_TEXT))
    sat = {**mm_to_source(state, config, "sat", qkv_order="interleaved"), **formats.make_unused(config, "sat", torch.float32)}
    formats.write_sat(tmp_path / "sat", sat, formats.sat_config_of_hf(config))
    mm = to_mm(tmp_path / "sat", tmp_path / "mm")
    assert "q/k/v rows are interleaved" in capsys.readouterr().out
    assert (mm / "ice_text.model").is_file()  # the tokenizer travels with the weights


def test_probe_refuses_a_checkpoint_it_cannot_tell(tiny, tmp_path: Path) -> None:
    from mm_core.errors import ConfigError

    with pytest.raises(ConfigError, match="qkv_order"):
        to_mm(tiny["root"] / "sat", tmp_path / "mm", probe_ids=[5, 6, 7, 8, 9, 10])
