"""Qwen2.5-VL conversions are exact: hf -> mm -> hf, resplit and DCP round trips, bit for bit.

Checkpoints are tiny random models saved by transformers (tied bf16 like the 3B, untied fp32
like the 7B). Every round trip compares key sets, dtypes and ``torch.equal`` on every tensor.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from mm_convert import engine
from mm_convert.config import (
    DcpToHfConfig,
    HFConfigSection,
    HfToDcpConfig,
    HfToMmConfig,
    MmToHfConfig,
    ParallelSection,
    ResplitConfig,
)
from mm_core.checkpoint import api

_spec = importlib.util.spec_from_file_location(
    "mm_convert_tiny_qwen", Path(__file__).parents[1] / "convert" / "tiny_qwen.py")
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

CONV = "Qwen2_5_VLConverter"


@pytest.fixture(scope="module")
def conv():
    return api.get_converter(CONV)


def load_dir(d: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(f, "pt") as s:  # the reference reader must accept what we write
            out.update({k: s.get_tensor(k) for k in s.keys()})
    return out


def assert_same(a: Path, b: Path) -> None:
    x, y = load_dir(a), load_dir(b)
    assert x.keys() == y.keys(), set(x) ^ set(y)
    for k in x:
        assert x[k].dtype == y[k].dtype, k
        assert torch.equal(x[k], y[k]), k


def to_mm(conv, hf: Path, mm: Path, tp=1, vit=None, llm=None) -> None:
    engine.hf_to_mm(conv, HfToMmConfig(mm_dir=str(mm), hf_config=HFConfigSection(str(hf)),
                                       parallel_config=ParallelSection(tp, vit, llm)), progress=False)


def to_hf(conv, mm: Path, out: Path, **kw) -> None:
    engine.mm_to_hf(conv, MmToHfConfig(mm_dir=str(mm), save_hf_dir=str(out), **kw), progress=False)


# one stage, pp 2 and virtual chunks at tp 1/2 run in the conformance suite (test_conformance.py)
LAYOUTS = {
    "vision_spans_two_stages": ([3, 1, 0], [0, 2, 2]),
    "llm_starts_after_stage_0": ([2, 2, 0, 0], [0, 0, 3, 1]),
}


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_hf_mm_hf_round_trip(conv, qwen_hf, tmp_path, tp, layout):
    vit, llm = LAYOUTS[layout]
    to_mm(conv, qwen_hf, tmp_path / "mm", tp, vit, llm)
    to_hf(conv, tmp_path / "mm", tmp_path / "back")
    assert_same(qwen_hf, tmp_path / "back")
    for name in ("config.json", "generation_config.json", "tokenizer_config.json"):
        assert (tmp_path / "back" / name).read_bytes() == (qwen_hf / name).read_bytes()


def test_placement_of_every_tensor(conv, qwen_tied, tmp_path):
    """Layers renumbered per stage; embedding on the LLM's first stage, head and projector on the
    last stages of their modules; the tied output layer copied to a stage without the embedding."""
    to_mm(conv, qwen_tied, tmp_path / "mm", 1, [2, 2, 0, 0], [0, 0, 3, 1])
    keys = [set(api.read_mm_rank(tmp_path / "mm", pp_rank=p)[0]) for p in range(4)]
    assert "image_encoder.encoder.patch_embed.proj.weight" in keys[0]
    assert "image_encoder.projector.layernorm.weight" in keys[1]
    assert "image_encoder.encoder.blocks.layers.1.input_layernorm.weight" in keys[1]
    assert "image_encoder.encoder.blocks.layers.2.input_layernorm.weight" not in keys[1]
    assert "text_decoder.embedding.word_embeddings.weight" in keys[2]
    assert "text_decoder.decoder.layers.2.input_layernorm.weight" in keys[2]
    assert {"text_decoder.output_layer.weight", "text_decoder.decoder.final_layernorm.weight",
            "text_decoder.decoder.layers.0.input_layernorm.weight"} <= keys[3]
    assert "text_decoder.decoder.layers.1.input_layernorm.weight" not in keys[3]
    assert not any(k.startswith("text_decoder") for k in keys[0] | keys[1])
    mm3 = api.read_mm_rank(tmp_path / "mm", pp_rank=3)[0]
    mm2 = api.read_mm_rank(tmp_path / "mm", pp_rank=2)[0]
    assert torch.equal(mm3["text_decoder.output_layer.weight"], mm2["text_decoder.embedding.word_embeddings.weight"])


@pytest.mark.parametrize("src,dst", [((1, None, None), (2, [3, 1], [0, 4])),
                                     ((2, [[2, 1], [1, 0]], [[0, 0], [2, 2]]), (1, [4, 0], [1, 3]))])
def test_resplit_round_trip(conv, qwen_hf, tmp_path, src, dst):
    to_mm(conv, qwen_hf, tmp_path / "a", *src)
    engine.resplit(conv, ResplitConfig(mm_dir=str(tmp_path / "a"), save_dir=str(tmp_path / "b"),
                                       parallel_config=ParallelSection(*dst)), progress=False)
    layout = api.read_mm_layout(tmp_path / "b")
    assert (layout.tp_size, layout.vit_pp_layers, layout.llm_pp_layers) == dst
    # the resplit files equal a direct conversion to that layout
    to_mm(conv, qwen_hf, tmp_path / "direct", *dst)
    for p in range(layout.pp_size):
        for t in range(layout.tp_size):
            a = api.read_mm_rank(tmp_path / "b", tp_rank=t, pp_rank=p)[0]
            b = api.read_mm_rank(tmp_path / "direct", tp_rank=t, pp_rank=p)[0]
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    to_hf(conv, tmp_path / "b", tmp_path / "back")
    assert_same(qwen_hf, tmp_path / "back")


def test_dcp_round_trip(conv, qwen_tied, tmp_path):  # untied fp32: the conformance suite
    engine.hf_to_dcp(conv, HfToDcpConfig(hf_dir=str(qwen_tied), save_dir=str(tmp_path / "dcp")), progress=False)
    assert (tmp_path / "dcp" / "latest_checkpointed_iteration.txt").read_text().strip() == "release"
    engine.dcp_to_hf(conv, DcpToHfConfig(hf_dir=str(qwen_tied), dcp_dir=str(tmp_path / "dcp"),
                                         save_dir=str(tmp_path / "back")), progress=False)
    assert_same(qwen_tied, tmp_path / "back")


def test_training_checkpoint_to_hf(conv, qwen_tied, tmp_path):
    """A DCP save dir like the engine's (``model.<global mm name>`` among optimizer state, under
    iter_%07d) converts with dcp_to_hf and with mm_to_hf, from the save dir or the iteration dir."""
    import torch.distributed.checkpoint as dcp

    full = api.hf_to_mm_rank(CONV, qwen_tied)  # one stage = global names
    state = {"model": dict(full), "optim": {"state.x.step": torch.tensor(3.0)}, "train": {"step": 100}}
    # a pipeline's last stage also saves its copy of the tied output layer: ignored on export
    state["model"]["text_decoder.output_layer.weight"] = full["text_decoder.embedding.word_embeddings.weight"]
    save = tmp_path / "save"
    dcp.save(state, checkpoint_id=str(save / "iter_0000100"), no_dist=True)
    (save / "latest_checkpointed_iteration.txt").write_text("100")
    engine.dcp_to_hf(conv, DcpToHfConfig(hf_dir=str(qwen_tied), dcp_dir=str(save / "iter_0000100"),
                                         save_dir=str(tmp_path / "a")), progress=False)
    assert_same(qwen_tied, tmp_path / "a")
    to_hf(conv, save, tmp_path / "b", hf_config=HFConfigSection(str(qwen_tied)))
    assert_same(qwen_tied, tmp_path / "b")


def test_dcp_written_by_hf_to_dcp_loads_like_the_engine(conv, qwen_untied, tmp_path):
    import torch.distributed.checkpoint as dcp

    engine.hf_to_dcp(conv, HfToDcpConfig(hf_dir=str(qwen_untied), save_dir=str(tmp_path / "dcp")), progress=False)
    full = api.hf_to_mm_rank(CONV, qwen_untied)
    state = {"model": {k: torch.zeros_like(v) for k, v in full.items()}}
    dcp.load(state, checkpoint_id=str(tmp_path / "dcp" / "release"), no_dist=True)
    assert all(torch.equal(state["model"][k], full[k]) for k in full)


def test_sharded_new_style_keys_round_trip(conv, tmp_path):
    """An HF dir sharded with an index, keys spelled model.visual.* / model.language_model.*:
    written back in the same spelling with a fresh index."""
    from safetensors.torch import save_file

    src = tiny.save_tiny_qwen(tmp_path / "hf", tied=False, max_shard_size="300KB")
    index = json.loads((src / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    new = tmp_path / "new"
    new.mkdir()
    remap = {}
    for f in sorted(set(index["weight_map"].values())):
        tensors = load_dir_file(src / f)
        ren = {("model.language_model." + k[6:] if k.startswith("model.") else
                "model." + k if k.startswith("visual.") else k): v for k, v in tensors.items()}
        save_file(ren, new / f, metadata={"format": "pt"})
        remap.update({k: f for k in ren})
    (new / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": remap}))
    (new / "config.json").write_text((src / "config.json").read_text())
    to_mm(conv, new, tmp_path / "mm", 2, [4, 0], [2, 2])
    to_hf(conv, tmp_path / "mm", tmp_path / "back", max_shard_size_gb=300e3 / 1024**3)
    assert_same(new, tmp_path / "back")
    back_index = json.loads((tmp_path / "back" / "model.safetensors.index.json").read_text())
    assert set(back_index["weight_map"]) == set(remap)
    assert all((tmp_path / "back" / f).is_file() for f in back_index["weight_map"].values())


def load_dir_file(f: Path) -> dict[str, torch.Tensor]:
    with safe_open(f, "pt") as s:
        return {k: s.get_tensor(k) for k in s.keys()}


def test_mindspeed_rank_files(conv, qwen_untied, tmp_path):
    """MindSpeed-MM dirs (model_optim_rng.pt, no layout record, no config.json) are read with
    weights_only=True, their layout inferred, and converted back exactly."""
    to_mm(conv, qwen_untied, tmp_path / "ours", 2, [[2, 1], [1, 0]], [[0, 0], [2, 2]])
    ms = tmp_path / "ms"
    for rank_dir in sorted((tmp_path / "ours" / "release").glob("mp_rank_*")):
        t, p = rank_dir.name.split("_")[2:]
        chunks = [api.read_mm_rank(tmp_path / "ours", tp_rank=int(t), pp_rank=int(p))[0]][0]
        obj = {f"model{v}": c for v, c in enumerate(chunks)}
        obj["model0"]["text_decoder.decoder.layers.0.self_attention.linear_qkv._extra_state"] = None
        obj["checkpoint_version"] = 3.0
        (ms / "release" / rank_dir.name).mkdir(parents=True)
        torch.save(obj, ms / "release" / rank_dir.name / "model_optim_rng.pt")
    (ms / "latest_checkpointed_iteration.txt").write_text("release")
    layout = api.read_mm_layout(ms, converter=conv) if (ms / "config.json").exists() else None
    assert layout is None  # no config.json: layer counts need the HF config, given below
    to_hf(conv, ms, tmp_path / "back", hf_config=HFConfigSection(str(qwen_untied)))
    assert_same(qwen_untied, tmp_path / "back")
    state, lay = api.read_mm_rank(ms, tp_rank=1, pp_rank=1)
    assert (lay.tp_size, lay.pp_size) == (2, 2) and len(state) == 2


def test_tp2_files_are_what_parallel_layers_expect(conv, qwen_untied, tmp_path):
    """Column-parallel (qkv, gated fc1, vocab) pieces times row-parallel pieces, summed over ranks,
    equal the unsplit computation: the split is really the tp layout."""
    to_mm(conv, qwen_untied, tmp_path / "mm", 2)
    full = api.hf_to_mm_rank(CONV, qwen_untied)
    ranks = [api.read_mm_rank(tmp_path / "mm", tp_rank=r)[0] for r in range(2)]
    full, ranks = {k: v.double() for k, v in full.items()}, [{k: v.double() for k, v in r.items()} for r in ranks]
    torch.manual_seed(0)
    pre = "text_decoder.decoder.layers.1."
    x = torch.randn(5, 64, dtype=torch.float64)

    def mlp(sd):  # column-parallel fc1 ([gate_r; up_r]) then row-parallel fc2
        gate, up = sd[pre + "mlp.linear_fc1.weight"].chunk(2)
        return (torch.nn.functional.silu(x @ gate.T) * (x @ up.T)) @ sd[pre + "mlp.linear_fc2.weight"].T

    torch.testing.assert_close(mlp(ranks[0]) + mlp(ranks[1]), mlp(full), rtol=1e-10, atol=1e-10)

    def attn_v(sd):  # per-group q/k/v from the interleaved qkv, then row-parallel linear_proj
        qkv = x @ sd[pre + "self_attention.linear_qkv.weight"].T + sd[pre + "self_attention.linear_qkv.bias"]
        groups = qkv.reshape(5, -1, 4 * 16)  # per kv group: 2 q heads + k + v, head_dim 16
        v = groups[..., 48:].repeat_interleave(2, dim=1).reshape(5, -1)  # each q head uses its group's v
        return v @ sd[pre + "self_attention.linear_proj.weight"].T

    torch.testing.assert_close(attn_v(ranks[0]) + attn_v(ranks[1]), attn_v(full), rtol=1e-10, atol=1e-10)
    # q of a rank's groups equals the HF q rows of those heads
    hf = {k: v.double() for k, v in load_dir(qwen_untied).items()}
    q_hf = hf["model.layers.1.self_attn.q_proj.weight"]
    qkv_r1 = ranks[1][pre + "self_attention.linear_qkv.weight"]
    assert torch.equal(qkv_r1[:32], q_hf[32:64])  # rank 1 holds kv group 1: q heads 2, 3
    assert torch.equal(qkv_r1[32:48], hf["model.layers.1.self_attn.k_proj.weight"][16:32])
    # vocab-parallel embedding and output layer: rank r holds rows [r*V/2, (r+1)*V/2)
    emb = "text_decoder.embedding.word_embeddings.weight"
    assert torch.equal(torch.cat([ranks[0][emb], ranks[1][emb]]), full[emb])
    logits = torch.cat([x @ r["text_decoder.output_layer.weight"].T for r in ranks], dim=-1)
    torch.testing.assert_close(logits, x @ full["text_decoder.output_layer.weight"].T)
    # vision qkv per head: rank r holds heads [2r, 2r+1] as [q, k, v] each
    vq = hf["visual.blocks.0.attn.qkv.weight"]  # [Q; K; V], 4 heads of 8
    r0 = ranks[0]["image_encoder.encoder.blocks.layers.0.self_attention.linear_qkv.weight"]
    assert torch.equal(r0[:8], vq[:8]) and torch.equal(r0[8:16], vq[32:40]) and torch.equal(r0[16:24], vq[64:72])
    # row-parallel biases and norms are replicated
    b = "image_encoder.encoder.blocks.layers.0.self_attention.linear_proj.bias"
    assert torch.equal(ranks[0][b], ranks[1][b])


def test_mm_to_hf_from_an_iteration_directory(conv, qwen_tied, tmp_path):
    to_mm(conv, qwen_tied, tmp_path / "mm", 2, [4, 0], [2, 2])
    to_hf(conv, tmp_path / "mm" / "release", tmp_path / "a")
    assert_same(qwen_tied, tmp_path / "a")
    to_hf(conv, tmp_path / "mm", tmp_path / "b", iteration="release")
    assert_same(qwen_tied, tmp_path / "b")


def test_round_trip_without_kernel_copy(conv, qwen_untied, tmp_path, monkeypatch):
    """File systems without copy_file_range use the pread/pwrite fallback: same bytes."""
    from mm_core.checkpoint import rowcopy

    monkeypatch.setattr(rowcopy, "_NO_KERNEL_COPY", True)
    monkeypatch.setattr(rowcopy.os, "copy_file_range", None)  # would fail if called
    to_mm(conv, qwen_untied, tmp_path / "mm", 2, [3, 1, 0], [0, 2, 2])
    to_hf(conv, tmp_path / "mm", tmp_path / "back")
    assert_same(qwen_untied, tmp_path / "back")
