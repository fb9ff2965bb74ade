"""Every parallel layout trains like one process (gloo on CPU, tiny Qwen2.5-VL, fp32).

One in-process reference, then ONE launch of 2 processes running, one after the other: dp=2
(saving a checkpoint), tp=2 (saving one too), tp=2 with sequence parallel, pp=2 (vision and LLM on different stages), a
resume at tp=2 of the dp=2 checkpoint, interleaved 1F1B with 2 virtual chunks, a fully frozen
stage and tied embeddings split over stages; plus one launch of 4 processes for dp=2 x tp=2,
dp=2 x pp=2 and pp=2 x tp=2 with sequence parallel. Loss and
updated weights after 3 steps must match the single process (rtol 1e-5).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location("engine_helpers", Path(__file__).with_name("_helpers.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

pytestmark = pytest.mark.distributed

# the tp layouts need the family's tensor-parallel plan; the toy model stands in if it is missing
TP_MODEL = "qwen" if helpers.qwen_tp_plan_available() else "toy"
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    out = {}
    for model in sorted({"qwen", TP_MODEL}):
        three, w3 = helpers.run_inprocess(tmp, f"{model}3", helpers.base_config(model))
        six, _ = helpers.run_inprocess(tmp, f"{model}6", helpers.base_config(model, **{"training.train_iters": 6}))
        out[model] = {"losses3": [r["loss"] for r in three], "weights3": w3, "losses6": [r["loss"] for r in six]}
    frozen, wf = helpers.run_inprocess(tmp, "frozen", _frozen(helpers.base_config("qwen")))
    out["frozen"] = {"losses3": [r["loss"] for r in frozen], "weights3": wf}
    tied, wt = helpers.run_inprocess(tmp, "tied", _tied(helpers.base_config("qwen", **{
        "output.save": str(tmp / "ckpt_tied")})))
    tied6, _ = helpers.run_inprocess(tmp, "tied6", _tied(helpers.base_config("qwen", **{"training.train_iters": 6})))
    out["tied"] = {"losses3": [r["loss"] for r in tied], "weights3": wt, "losses6": [r["loss"] for r in tied6],
                   "ckpt": tmp / "ckpt_tied"}
    return out


def _tied(cfg: dict) -> dict:
    cfg["model"]["hf_config"] = {**cfg["model"]["hf_config"], "tie_word_embeddings": True}
    return cfg


def _frozen(cfg: dict) -> dict:
    cfg["model"]["freeze"] = ["vision_encoder", "vision_projector"]
    return cfg


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory, reference):
    tmp = tmp_path_factory.mktemp("two")
    dp2 = helpers.base_config("qwen", **{"output.save": str(tmp / "ckpt_dp2")})
    tp2 = helpers.base_config(TP_MODEL, **{"output.save": str(tmp / "ckpt_tp2")})
    tp2["parallel"].update(tp=2)
    # sequence parallel in the LLM (the qwen plan only): activations sharded over the sequence
    tp2sp = helpers.base_config("qwen")
    tp2sp["parallel"].update(tp=2, sequence_parallel=True)
    pp2 = helpers.base_config("qwen")
    pp2["parallel"].update(pp=2)
    pp2["model"].update(vit_pp_layers=[2, 0], llm_pp_layers=[0, 2])
    resume = helpers.base_config("qwen", **{"output.load": str(tmp / "ckpt_dp2"), "training.train_iters": 6})
    if TP_MODEL == "qwen":
        resume["parallel"].update(tp=2)
    else:  # no qwen tp plan: resume with vision and LLM on two stages instead
        resume["parallel"].update(pp=2)
        resume["model"].update(vit_pp_layers=[2, 0], llm_pp_layers=[0, 2])
    # interleaved 1F1B: 2 ranks x 2 virtual chunks = 4 stages (vision 1+1, then LLM 1+1)
    vpp = helpers.base_config("qwen")
    vpp["parallel"].update(pp=2, pp_schedule="Interleaved1F1B")
    vpp["model"].update(vit_pp_layers=[[1, 1], [0, 0]], llm_pp_layers=[[0, 0], [1, 1]])
    # the whole vision stage frozen: no optimizer on rank 0, its backward ends at its output
    frozen = _frozen(helpers.base_config("qwen"))
    frozen["parallel"].update(pp=2)
    frozen["model"].update(vit_pp_layers=[2, 0], llm_pp_layers=[0, 2])
    # tied embeddings with the word embedding (stage 0) and the LM head copy (stage 1) apart
    tied = _tied(helpers.base_config("qwen"))
    tied["parallel"].update(pp=2)
    tied["model"].update(vit_pp_layers=[2, 0], llm_pp_layers=[1, 1])
    # ... and resuming a one-process tied checkpoint (no LM head copy in it) on that layout
    tied_resume = _tied(helpers.base_config("qwen", **{"output.load": str(reference["tied"]["ckpt"]),
                                                        "training.train_iters": 6}))
    tied_resume["parallel"].update(pp=2)
    tied_resume["model"].update(vit_pp_layers=[2, 0], llm_pp_layers=[1, 1])
    runs = {"dp2": dp2, "tp2": tp2, "pp2": pp2, "resume": resume, "vpp": vpp, "frozen_pp2": frozen,
            "tied_pp2": tied, "tied_resume": tied_resume}
    if TP_MODEL == "qwen":
        runs["tp2sp"] = tp2sp
    proc = helpers.run_torchrun_many(tmp, 2, runs)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp


def _check(out: Path, ref: dict) -> None:
    losses = [r["loss"] for r in helpers.read_records(out)]
    assert losses == pytest.approx(ref["losses3"], rel=RTOL), (losses, ref["losses3"])
    got = helpers.worker.merged_weights(out)
    assert set(got) == set(ref["weights3"])
    for k, v in ref["weights3"].items():
        torch.testing.assert_close(got[k], v, rtol=RTOL, atol=ATOL, msg=k)


def test_dp2(two_process_runs, reference):
    _check(two_process_runs / "dp2", reference["qwen"])


def test_tp2(two_process_runs, reference):
    _check(two_process_runs / "tp2", reference[TP_MODEL])


@pytest.mark.skipif(TP_MODEL != "qwen", reason="needs the qwen tensor-parallel plan")
def test_tp2_sequence_parallel(two_process_runs, reference):
    _check(two_process_runs / "tp2sp", reference["qwen"])


def test_pp2_vision_and_llm_on_different_stages(two_process_runs, reference):
    _check(two_process_runs / "pp2", reference["qwen"])


def test_interleaved_pipeline_with_virtual_chunks(two_process_runs, reference):
    _check(two_process_runs / "vpp", reference["qwen"])


def test_pp2_with_a_fully_frozen_stage(two_process_runs, reference):
    _check(two_process_runs / "frozen_pp2", reference["frozen"])
    states = [json.loads((two_process_runs / "frozen_pp2" / f"optim_rank{r}.json").read_text())
              for r in (0, 1)]
    assert states[0]["params_with_state"] == 0 and states[1]["params_with_state"] > 0


def test_tied_embedding_and_head_on_different_stages(two_process_runs, reference):
    out = two_process_runs / "tied_pp2"
    head = helpers.worker.merged_weights(out).pop("text_decoder.output_layer.weight")
    for r in (0, 1):  # the per-rank dumps: drop the head copy, compare the rest with one process
        f = out / f"weights_rank{r}.pt"
        w = torch.load(f, weights_only=True)
        w.pop("text_decoder.output_layer.weight", None)
        torch.save(w, f)
    _check(out, reference["tied"])
    torch.testing.assert_close(head, reference["tied"]["weights3"]["text_decoder.embedding.word_embeddings.weight"],
                               rtol=RTOL, atol=ATOL)


def test_tied_checkpoint_without_head_copy_resumes_on_two_stages(two_process_runs, reference):
    records = helpers.read_records(two_process_runs / "tied_resume")
    assert [r["step"] for r in records] == [4, 5, 6]
    assert [r["loss"] for r in records] == pytest.approx(reference["tied"]["losses6"][3:], rel=RTOL)


def test_resume_dp2_checkpoint_on_another_layout(two_process_runs, reference):
    records = helpers.read_records(two_process_runs / "resume")
    assert [r["step"] for r in records] == [4, 5, 6]
    assert [r["loss"] for r in records] == pytest.approx(reference["qwen"]["losses6"][3:], rel=RTOL)


def test_tp2_checkpoint_resumes_in_one_process(two_process_runs, reference, tmp_path):
    # the tp=2 checkpoint holds whole tensors in checkpoint order (gated fc1 as [gate; up])
    resumed, _ = helpers.run_inprocess(tmp_path, "resume1", helpers.base_config(
        TP_MODEL, **{"output.load": str(two_process_runs / "ckpt_tp2"), "training.train_iters": 6}))
    assert [r["loss"] for r in resumed] == pytest.approx(reference[TP_MODEL]["losses6"][3:], rel=RTOL)


def _tp4_uneven_vocab(**overrides) -> dict:
    """A tiny Qwen2.5-VL for tp 4 whose vocabulary (322 rows: mm-format 81/81/80/80, torch.chunk
    81/81/81/79) trains over padded shards."""
    from mm_qwen.tiny import tiny_config_dict

    hf = tiny_config_dict(vision_depth=2, text_layers=2, heads=4, kv_heads=4, vit_hidden=32, vit_heads=4,
                          vocab={"vocab_size": 322, "image_token_id": 300, "video_token_id": 301,
                                 "vision_start_token_id": 302, "vision_end_token_id": 303})
    cfg = helpers.base_config("qwen", **overrides)
    cfg["model"]["hf_config"] = hf
    return cfg


def test_four_processes_dp2_tp2_dp2_pp2_pp2_tp2_sp_and_tp4_uneven_vocabulary(tmp_path, reference):
    cfg = helpers.base_config(TP_MODEL)
    cfg["parallel"].update(tp=2)
    cfg["training"].update(recompute="full")  # recomputed layers under FSDP2 and tp: the same numbers
    # dp x pp: data ranks agree on each step's padded length (their FSDP collectives must match)
    dp_pp = helpers.base_config("qwen")
    dp_pp["parallel"].update(pp=2)
    dp_pp["model"].update(vit_pp_layers=[2, 0], llm_pp_layers=[0, 2])
    # tp 4 over a vocabulary that 4 does not divide (padded shards), saving a checkpoint
    tp4 = _tp4_uneven_vocab(**{"output.save": str(tmp_path / "ckpt_tp4")})
    tp4["parallel"].update(tp=4)
    runs = {"dp2tp2": cfg, "dp2pp2": dp_pp, "tp4vocab": tp4}
    if TP_MODEL == "qwen":  # pp x tp with sequence parallel in the LLM stage (no data parallel: plain stages)
        pp_tp_sp = helpers.base_config("qwen")
        pp_tp_sp["parallel"].update(pp=2, tp=2, sequence_parallel=True)
        pp_tp_sp["model"].update(vit_pp_layers=[2, 0], llm_pp_layers=[0, 2])
        runs["pp2tp2sp"] = pp_tp_sp
    proc = helpers.run_torchrun_many(tmp_path, 4, runs)
    assert proc.returncode == 0, proc.stderr[-4000:]
    _check(tmp_path / "dp2tp2", reference[TP_MODEL])
    _check(tmp_path / "dp2pp2", reference["qwen"])
    if "pp2tp2sp" in runs:
        _check(tmp_path / "pp2tp2sp", reference["qwen"])
    three, weights = helpers.run_inprocess(tmp_path, "tp4_ref", _tp4_uneven_vocab())
    _check(tmp_path / "tp4vocab", {"losses3": [r["loss"] for r in three], "weights3": weights})
    # the tp 4 checkpoint holds the canonical [V, H] rows: it resumes in one process like a one-process run
    six, _ = helpers.run_inprocess(tmp_path, "tp4_ref6", _tp4_uneven_vocab(**{"training.train_iters": 6}))
    resumed, _ = helpers.run_inprocess(tmp_path, "tp4_resume1", _tp4_uneven_vocab(**{
        "output.load": str(tmp_path / "ckpt_tp4"), "training.train_iters": 6}))
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in six][3:], rel=RTOL)


def _tp3_qwen(**overrides) -> dict:
    """A tiny Qwen2.5-VL whose every split divides by 3: 6/3 heads, vocab 324, widths multiple of 3."""
    from mm_qwen.tiny import tiny_config_dict

    hf = tiny_config_dict(vision_depth=2, text_layers=2, hidden=48, heads=6, kv_heads=3, vit_hidden=24,
                          vit_heads=3, intermediate_size=96,
                          vocab={"vocab_size": 324, "image_token_id": 300, "video_token_id": 301,
                                 "vision_start_token_id": 302, "vision_end_token_id": 303})
    hf["vision_config"]["intermediate_size"] = 48
    cfg = helpers.base_config("qwen", **overrides)
    cfg["model"]["hf_config"] = hf
    return cfg


def test_tp3_trains_like_one_process(tmp_path):
    """tp=3 with sequence parallel: the plan derived from the converter's rules on a width that only 3 divides."""
    three, weights = helpers.run_inprocess(tmp_path, "tp3_ref", _tp3_qwen())
    cfg = _tp3_qwen()
    cfg["parallel"].update(tp=3, sequence_parallel=True)
    proc = helpers.run_torchrun_many(tmp_path, 3, {"tp3": cfg})
    assert proc.returncode == 0, proc.stderr[-4000:]
    _check(tmp_path / "tp3", {"losses3": [r["loss"] for r in three], "weights3": weights})
