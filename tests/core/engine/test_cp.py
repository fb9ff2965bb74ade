"""Context parallel trains like one process (gloo on CPU, fp32, tiny Qwen2.5-VL and InternVL3).

Micro-batches with images and a packed row (two samples with their own media, then padding),
lengths that 2 x cp does not divide (the trainer pads). One in-process reference per family,
then ONE launch of 4 processes (cp 2 x dp 2 and cp 2 x tp 2 with sequence parallel, both
families; cp 2 x pp 2 for Qwen) through ``_cp_worker.py``; cp 2 alone runs in each family's conformance suite, inside
its existing 2-process launch (``mm_core.testing.parallel_checks``). Losses, gradient norms and
the saved weights after 2 steps must equal one process (rtol 1e-5). Qwen trains with
``per_token_loss``, InternVL with ``square_loss`` as InternVL users run it; every loss type's
split over cp ranks is checked without processes below (``square_loss`` normalises by the mean over
data-parallel ranks, so dp 2 is compared with ``per_token_loss``, which the reference also trains).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from mm_core.engine.context_parallel import ContextParallel, chunk_positions
from mm_core.engine.context_parallel_attention import chunk_attention, one_sample_per_row
from mm_core.kernels import reference as ref_kernels

_spec = importlib.util.spec_from_file_location("cp_worker", Path(__file__).with_name("_cp_worker.py"))
cp_worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cp_worker)

RTOL, ATOL = 1e-5, 1e-6
STEPS = 2
LOSS = {"qwen": "per_token_loss", "internvl": "square_loss"}


def _pad(batch: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    fill = {"input_ids": 0, "attention_mask": 0, "segment_ids": -1, "labels": -100}
    for key, value in fill.items():
        if key in batch:
            batch[key] = torch.cat([batch[key], torch.full((1, n), value, dtype=batch[key].dtype)], 1)
    return batch


def qwen_case() -> tuple[dict[str, Any], list[dict[str, torch.Tensor]]]:
    from mm_qwen.tiny import make_inputs, tiny_config_dict

    cfg = tiny_config_dict(vision_depth=2, text_layers=2)
    one = make_inputs(cfg, [[("text", 5), ("image", (1, 4, 8)), ("text", 6)]], seed=1, padding="right")
    packed = make_inputs(cfg, [[("text", 3), ("image", (1, 4, 4)), ("text", 4)], [("text", 7)]], seed=2, pack=True)
    return cfg, [one, _pad(packed, 3)]


def internvl_case() -> tuple[dict[str, Any], list[dict[str, torch.Tensor]]]:
    from mm_internvl.tiny import make_inputs, tiny_config_dict

    cfg = tiny_config_dict()
    one = make_inputs(cfg, [[("text", 3), ("image", 1), ("text", 4)]], seed=1)
    rows = make_inputs(cfg, [[("text", 2), ("image", 2), ("text", 3)], [("text", 6)]], seed=2)
    lengths = rows["attention_mask"].sum(1).tolist()
    packed = {"input_ids": torch.cat([rows["input_ids"][i, :n] for i, n in enumerate(lengths)])[None],
              "labels": torch.cat([rows["labels"][i, :n] for i, n in enumerate(lengths)])[None],
              "segment_ids": torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None],
              "pixel_values": rows["pixel_values"]}
    packed["labels"][0, lengths[0]] = -100  # a sample's first token predicts nothing (batch contract)
    packed["attention_mask"] = (packed["segment_ids"] >= 0).long()
    return cfg, [one, _pad(packed, 3)]


CASES = {"qwen": qwen_case, "internvl": internvl_case}


def finetune_config(hf_config: dict[str, Any], loss_type: str, save: Path, **parallel: Any) -> dict[str, Any]:
    return {
        "model": {"hf_config": hf_config, "random_init": True},
        "data": {"source": "synthetic"},  # never built: the worker hands the trainer fixed micro-batches
        "parallel": {"device": "cpu", **parallel},
        "training": {"micro_batch_size": 1, "global_batch_size": 2, "seq_length": 128, "train_iters": STEPS,
                     "lr": 3e-3, "lr_schedule": "constant", "clip_grad": 1.0, "dtype": "fp32",
                     "loss_type": loss_type, "seed": 7, "adam_eps": 1e-4},
        "output": {"progress_bar": False, "log_interval": 100, "save": str(save), "save_weights_only": True},
    }


def _job(root: Path, name: str, runs: dict[str, tuple[str, dict[str, Any]]]) -> Path:
    entries = {}
    for run, (family, cfg) in runs.items():
        path = root / f"{run}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        entries[run] = {"config": str(path), "batches": str(root / f"{family}_batches.pt")}
    job = root / f"{name}.json"
    job.write_text(json.dumps({"out": str(root), "runs": entries}))
    return job


def _launch(job: Path, nproc: int) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           str(Path(__file__).with_name("_cp_worker.py")), str(job)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"the {nproc}-process launch failed:\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cp")
    configs = {}
    for family, case in CASES.items():
        hf_config, batches = case()
        torch.save(batches, root / f"{family}_batches.pt")
        configs[family] = hf_config

    def cfg(family: str, run: str, loss: str | None = None, **parallel: Any) -> tuple[str, dict[str, Any]]:
        return family, finetune_config(configs[family], loss or LOSS[family], root / run / "ckpt", **parallel)

    # pipeline: vision + one LLM layer on stage 0, the other LLM layer on stage 1 (hidden states
    # travel between stages as each cp rank's chunks)
    pp2 = cfg("qwen", "qwen_cp2_pp2", cp=2, pp=2)
    pp2[1]["model"].update(vit_pp_layers=[2, 0], llm_pp_layers=[1, 1])

    one = {f"{f}_one": cfg(f, f"{f}_one") for f in CASES}
    one["internvl_one_per_token"] = cfg("internvl", "internvl_one_per_token", "per_token_loss")
    cp_worker.run_job(_job(root, "reference", one))
    four = {}
    for f in CASES:
        four[f"{f}_cp2_dp2"] = cfg(f, f"{f}_cp2_dp2", "per_token_loss", cp=2)
        four[f"{f}_cp2_tp2"] = cfg(f, f"{f}_cp2_tp2", cp=2, tp=2, sequence_parallel=True)
    four["qwen_cp2_pp2"] = pp2
    _launch(_job(root, "four", four), 4)
    return root


def _matches_one_process(root: Path, one: str, name: str) -> None:
    from mm_core.testing.hf_files import read_dcp_model

    ref = json.loads((root / one / "records.json").read_text())
    got = json.loads((root / name / "records.json").read_text())
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in ref], rel=RTOL)
    assert [r["grad_norm"] for r in got] == pytest.approx([r["grad_norm"] for r in ref], rel=RTOL)
    want = read_dcp_model(root / one / "ckpt" / f"iter_{STEPS:07d}")
    have = read_dcp_model(root / name / "ckpt" / f"iter_{STEPS:07d}")
    assert set(want) == set(have), sorted(set(want) ^ set(have))[:5]
    for k, v in want.items():
        torch.testing.assert_close(have[k], v, rtol=RTOL, atol=ATOL, msg=lambda m, k=k: f"{name} {k}: {m}")


@pytest.mark.distributed
@pytest.mark.parametrize("run", ["qwen_cp2_dp2", "qwen_cp2_tp2", "qwen_cp2_pp2", "internvl_cp2_dp2",
                                 "internvl_cp2_tp2"])
def test_context_parallel_equals_one_process(runs: Path, run: str) -> None:
    one = "internvl_one_per_token" if run == "internvl_cp2_dp2" else f"{run.split('_')[0]}_one"
    _matches_one_process(runs, one, run)


# -- without processes ----------------------------------------------------------------------------


@pytest.mark.parametrize("cp", [1, 2, 3])
def test_chunks_cover_the_sequence_once_with_equal_causal_work(cp: int) -> None:
    length = 12 * cp
    held = [chunk_positions(length, cp, r) for r in range(cp)]
    assert torch.equal(torch.cat(held).sort().values, torch.arange(length))
    work = {int((p + 1).sum()) for p in held}  # keys each rank's queries attend to
    assert len(work) == 1
    with pytest.raises(ValueError, match="2 x cp"):
        chunk_positions(length + 1, cp, 0)


@pytest.mark.parametrize("packed", [False, True], ids=["one_sample", "packed_with_padding"])
def test_chunk_attention_equals_whole_sequence_attention(packed: bool) -> None:
    """Each cp rank's two chunks against the keys up to them give the rows (and gradients) of the
    whole sequence's causal attention, through the flash blocks or the segment mask."""
    torch.manual_seed(0)
    cp, b, h, hkv, t, d = 2, 2, 4, 2, 24, 8
    q = torch.randn(b, h, t, d, requires_grad=True)
    k, v = (torch.randn(b, hkv, t, d, requires_grad=True) for _ in range(2))
    seg = torch.tensor([[0] * 7 + [1] * 13 + [-1] * 4, [0] * 20 + [1] * 4]) if packed else None
    want = ref_kernels.attention(q, k, v, causal=True, segment_ids=seg, scale=0.3)
    c = t // (2 * cp)
    got = torch.zeros_like(want)
    for r in range(cp):
        for chunk in (r, 2 * cp - 1 - r):
            rows = slice(chunk * c, (chunk + 1) * c)
            end = (chunk + 1) * c
            got[:, :, rows] = chunk_attention(q[:, :, rows], k[:, :, :end], v[:, :, :end],
                                              seg[:, :end] if seg is not None else None, 0.3)
    real = (seg >= 0)[:, None, :, None] if seg is not None else torch.ones(1, 1, t, 1, dtype=torch.bool)
    torch.testing.assert_close(got * real, want * real, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(want) * real
    for a, e in zip(torch.autograd.grad(got, (q, k, v), grad), torch.autograd.grad(want, (q, k, v), grad),
                    strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_one_sample_then_padding_takes_the_mask_free_path() -> None:
    assert one_sample_per_row(torch.tensor([[0, 0, 0, -1], [0, 0, 0, 0]]))
    assert not one_sample_per_row(torch.tensor([[0, 0, 1, -1]]))  # packed
    assert not one_sample_per_row(torch.tensor([[-1, 0, 0, 0]]))  # left padding: real tokens would see it


@pytest.mark.parametrize("loss_type", ["default", "per_sample_loss", "per_token_loss", "token_loss", "square_loss"])
def test_every_loss_type_adds_up_over_cp_ranks(loss_type: str) -> None:
    """Weights and denominators come from the whole sequence; the cp ranks' shares sum to it."""
    from mm_core.engine.loss import prepare_window
    from mm_core.plugins import get_plugin_manager

    _, batches = qwen_case()
    spec = get_plugin_manager().loss(loss_type)
    length = 24
    window = [_pad(dict(bt), length - bt["input_ids"].shape[1]) for bt in batches]
    full = prepare_window(window, spec, torch.device("cpu"), None, 1)
    ce = [torch.rand(mb.targets.shape) for mb in full]
    whole = [float((mb.weights * x).sum() / mb.denominator) for mb, x in zip(full, ce, strict=True)]
    shares = [0.0] * len(full)
    for rank in range(3):
        cp = ContextParallel(None, 3, rank)  # type: ignore[arg-type]  (splitting needs no group)
        mbs = prepare_window(window, spec, torch.device("cpu"), None, 1)
        cp.split_micro_batches(mbs)
        for i, mb in enumerate(mbs):
            assert mb.cp_scale == 3.0 and mb.targets.shape[1] == length // 3
            shares[i] += float((mb.weights * cp.split(ce[i], 1)).sum() / mb.denominator)
    assert shares == pytest.approx(whole, rel=1e-6)


@pytest.mark.parametrize(("parallel", "training", "match"), [
    ({"cp": 3}, {}, r"tp x pp x cp = 1 x 1 x 3 = 3 does not divide the world size 4"),
    ({"cp": 2}, {"seq_length": 30}, r"training.seq_length: 30 is not a multiple of 2 x cp = 4"),
    ({"cp": 2, "tp": 2, "sequence_parallel": True}, {"seq_length": 36},
     r"training.seq_length: 36 is not a multiple of 2 x cp x tp \(sequence parallel\) = 8"),
    ({"cp": 2}, {"compile": True}, r"training.compile: compiled layers with context parallel"),
    ({"cp": 0}, {}, r"parallel.cp: must be >= 1"),
])
def test_config_errors_name_the_field(parallel: dict, training: dict, match: str) -> None:
    from mm_core.engine.config import FinetuneConfig, ParallelConfig, TrainingConfig, validate
    from mm_core.errors import ConfigError

    hf_config, _ = qwen_case()
    cfg = FinetuneConfig(parallel=ParallelConfig(**parallel),
                         training=TrainingConfig(train_iters=1, global_batch_size=4, **{"seq_length": 64, **training}))
    cfg.model.random_init = True
    cfg.data.source = "synthetic"
    with pytest.raises(ConfigError, match=match):
        validate(cfg, 4, hf_config)


def test_cp_layout_divides_the_world_with_data_parallel() -> None:
    from mm_core.engine.config import FinetuneConfig, ParallelConfig, TrainingConfig, validate

    hf_config, _ = qwen_case()
    cfg = FinetuneConfig(parallel=ParallelConfig(cp=2, tp=2), training=TrainingConfig(train_iters=1, seq_length=64,
                                                                                        global_batch_size=4))
    cfg.model.random_init = True
    cfg.data.source = "synthetic"
    layout = validate(cfg, 8, hf_config)
    assert (layout.cp, layout.tp, layout.dp, layout.grad_accum) == (2, 2, 2, 2)
