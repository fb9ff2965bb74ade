"""Single-process engine behaviour: learning, accumulation, freezing, resume, config errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mm_core.cli.finetune import main as finetune_main

_spec = importlib.util.spec_from_file_location("engine_helpers", Path(__file__).with_name("_helpers.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)
WORKER, base_config, run_inprocess, write_config = (helpers.WORKER, helpers.base_config, helpers.run_inprocess,
                                                    helpers.write_config)


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


def test_loss_goes_down(tmp):
    cfg = base_config(**{"training.train_iters": 12, "data.synthetic_samples": 8, "training.lr": 2e-2,
                         "training.global_batch_size": 8, "training.micro_batch_size": 4,
                         "training.clip_grad": 1.0})
    records, _ = run_inprocess(tmp, "learn", cfg)
    losses = [r["loss"] for r in records]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
    # the headline counts every real input token; the loss tokens (answers) are fewer
    assert all(r["real_tokens_per_s"] > r["loss_tokens_per_s"] > 0 and r["grad_norm"] > 0 for r in records)
    assert all(r["real_tokens"] > r["loss_tokens"] > 0 and r["samples"] == 8 for r in records)


def test_grad_accumulation_equals_bigger_micro_batch(tmp):
    ga, _ = run_inprocess(tmp, "ga2", base_config(**{"training.micro_batch_size": 2}))
    big, wbig = run_inprocess(tmp, "mbs4", base_config(**{"training.micro_batch_size": 4}))
    _, wga = run_inprocess(tmp, "ga2b", base_config(**{"training.micro_batch_size": 2}))
    assert [r["loss"] for r in ga] == pytest.approx([r["loss"] for r in big], rel=1e-5)
    for k in wbig:
        torch.testing.assert_close(wga[k], wbig[k], rtol=1e-5, atol=1e-6, msg=k)


def test_frozen_vision_encoder_gets_no_grad_and_no_optimizer_state(tmp):
    from mm_core.engine.trainer import Trainer, shutdown

    cfg_file = write_config(tmp / "frozen.yaml", base_config(**{"model.freeze": ["vision_encoder"],
                                                                "training.train_iters": 1}))
    from mm_core.engine.config import parse_finetune_config

    trainer = Trainer(parse_finetune_config(["--config", str(cfg_file)]))
    try:
        before = {n: p.detach().clone() for n, p in trainer.stages.modules[0].named_parameters()}
        trainer.train_step()
        stage = trainer.stages.modules[0]
        opt = trainer.optimizers[0]
        state_ids = {id(p) for p in opt.state}
        for name, p in stage.named_parameters():
            frozen = name.startswith("model.image_encoder.encoder.")
            assert (p.grad is None) if frozen else True, name
            assert (id(p) in state_ids) != frozen, name
            changed = not torch.equal(p.detach(), before[name])
            assert changed != frozen, name
    finally:
        shutdown()


def test_resume_after_sigkill_is_bit_identical(tmp):
    cfg = base_config(**{"training.train_iters": 6, "training.lr_schedule": "cosine", "training.warmup_iters": 2,
                         "output.save": str(tmp / "ckpt"), "output.save_interval": 3, "output.keep_last": 1})
    full, _ = run_inprocess(tmp, "full", {**cfg, "output": {**cfg["output"], "save": str(tmp / "ckpt_full")}})
    cfg_file = write_config(tmp / "killed.yaml", cfg)
    proc = subprocess.run([sys.executable, str(WORKER), str(tmp / "killed"), "--kill-after", "3",
                           "--config", str(cfg_file)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (tmp / "ckpt" / "latest_checkpointed_iteration.txt").read_text() == "3"
    resumed, _ = run_inprocess(tmp, "resumed", {**cfg, "output": {**cfg["output"], "load": str(tmp / "ckpt")}})
    assert [r["step"] for r in resumed] == [4, 5, 6]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full[3:]]
    assert [r["grad_norm"] for r in resumed] == [r["grad_norm"] for r in full[3:]]
    # keep_last 1: only the final checkpoint remains
    assert sorted(p.name for p in (tmp / "ckpt").glob("iter_*")) == ["iter_0000006"]
    # one file, two runs: each starts with its header, the second says what it resumed from
    lines = [json.loads(x) for x in (tmp / "ckpt" / "metrics.jsonl").read_text().splitlines()]
    headers = [r for r in lines if r.get("record") == "run_header"]
    assert lines[0] == headers[0] and lines[1]["step"] == 1
    assert [(h["start_step"], h["world_size"]) for h in headers] == [(0, 1), (3, 1)]
    assert headers[0]["resumed_from"] is None and headers[1]["resumed_from"].endswith("iter_0000003")
    assert headers[0]["run_id"] != headers[1]["run_id"]


def test_a_crash_mid_save_leaves_the_previous_checkpoint_latest(tmp, monkeypatch):
    import mm_core.engine.checkpoint as ckpt

    real_save, calls = ckpt.dcp.save, []

    def failing_save(state, checkpoint_id):
        calls.append(checkpoint_id)
        if len(calls) == 2:  # the second save dies after writing part of its files
            Path(checkpoint_id).mkdir(parents=True, exist_ok=True)
            (Path(checkpoint_id) / "__0_0.distcp").write_bytes(b"partial")
            raise OSError("disk full")
        return real_save(state, checkpoint_id=checkpoint_id)

    monkeypatch.setattr(ckpt.dcp, "save", failing_save)
    cfg = base_config(**{"training.train_iters": 4, "output.save": str(tmp / "c"), "output.save_interval": 2})
    with pytest.raises(OSError, match="disk full"):
        run_inprocess(tmp, "crash", cfg)
    assert (tmp / "c" / "latest_checkpointed_iteration.txt").read_text() == "2"
    monkeypatch.setattr(ckpt.dcp, "save", real_save)
    resumed, _ = run_inprocess(tmp, "after_crash", {**cfg, "output": {**cfg["output"], "load": str(tmp / "c")}})
    assert [r["step"] for r in resumed] == [3, 4]


def test_weights_only_checkpoint_starts_a_new_run_from_its_weights(tmp):
    import torch.distributed.checkpoint as dcp

    from mm_core.engine.config import parse_finetune_config
    from mm_core.engine.trainer import Trainer, shutdown

    cfg = base_config(**{"training.train_iters": 2, "output.save": str(tmp / "w"), "output.save_weights_only": True})
    _, trained = run_inprocess(tmp, "weights_only", cfg)
    keys = set(dcp.FileSystemReader(str(tmp / "w" / "iter_0000002")).read_metadata().state_dict_metadata)
    assert keys and all(k.startswith("model.") for k in keys)
    # also what `mm-convert ... hf_to_dcp` writes: <dir>/release + "release" in the tracker
    (tmp / "w" / "iter_0000002").rename(tmp / "w" / "release")
    (tmp / "w" / "latest_checkpointed_iteration.txt").write_text("release")
    new = write_config(tmp / "new.yaml", base_config(**{"output.load": str(tmp / "w")}))
    trainer = Trainer(parse_finetune_config(["--config", str(new)]))
    try:
        assert trainer.step == 0
        for name, p in trainer.stages.modules[0].named_parameters():
            assert not hasattr(p, "full_tensor"), "one data-parallel rank trains the plain module (no FSDP2)"
            torch.testing.assert_close(p.detach(), trained[name[len("model."):]], rtol=0, atol=0)
    finally:
        shutdown()


def test_one_rank_without_fsdp_trains_exactly_like_fsdp(tmp):
    """dp == 1 leaves FSDP2 out (``parallel.fsdp auto``): the same losses and weights as wrapping anyway."""
    plain, w_plain = run_inprocess(tmp, "plain", base_config())
    always = base_config()
    always["parallel"]["fsdp"] = "always"
    wrapped, w_wrapped = run_inprocess(tmp, "wrapped", always)
    assert [r["loss"] for r in plain] == pytest.approx([r["loss"] for r in wrapped], rel=1e-6)
    assert set(w_plain) == set(w_wrapped)
    for k, v in w_wrapped.items():
        torch.testing.assert_close(w_plain[k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_bf16_on_one_rank_computes_in_bf16_like_fsdp_mixed_precision(tmp):
    """Without FSDP2, bf16 compute comes from autocast: close to FSDP2's parameter cast, and not fp32."""
    fp32, _ = run_inprocess(tmp, "fp32", base_config())
    auto, w_auto = run_inprocess(tmp, "bf16_auto", base_config(**{"training.dtype": "bf16"}))
    always = base_config(**{"training.dtype": "bf16"})
    always["parallel"]["fsdp"] = "always"
    wrapped, _ = run_inprocess(tmp, "bf16_fsdp", always)
    ref, got, full = ([r["loss"] for r in rs] for rs in (wrapped, auto, fp32))
    assert got == pytest.approx(ref, rel=2e-2)
    assert got != pytest.approx(full, rel=1e-5), "bf16 training gave exactly the fp32 losses"
    assert all(v.dtype == torch.float32 for v in w_auto.values()), "master weights stay fp32"


@pytest.mark.parametrize("override,message", [
    (["--parallel.tp", "3"], "does not divide the world size"),
    (["--model.llm_pp_layers", "[1,1]", "--model.vit_pp_layers", "[1,1]", "--parallel.pp", "2"],
     "vision encoder must finish first"),
    (["--training.global_batch_size", "3"], "not a multiple"),
    (["--training.loss_type", "nope"], "training.loss_type"),
    (["--model.freeze", "[vision]"], "unknown module group"),
    (["--training.lr_schedule", "wavy"], "lr_schedule"),
    (["--training.optimizer_impl", "fast"], "training.optimizer_impl"),
])
def test_config_errors_before_workers_start(tmp, capsys, override, message):
    cfg_file = write_config(tmp / "bad.yaml", base_config(**{"output.save": str(tmp / "never")}))
    rc = finetune_main(["--nproc-per-node", "2", "--config", str(cfg_file), *override])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp / "never").exists()


def test_compiled_layers_train_like_eager(tmp):
    """training.compile wraps each layer with torch.compile (aot_eager here: the same traced graphs
    without code generation, so the test stays fast); every layer traces without a graph break and
    losses and weights match the eager run."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    eager, w_eager = run_inprocess(tmp, "eager", base_config())
    torch._dynamo.reset()
    counters.clear()
    compiled, w_compiled = run_inprocess(tmp, "compiled", base_config(**{"training.compile": True,
                                                                        "training.compile_backend": "aot_eager"}))
    assert counters["stats"]["unique_graphs"] > 0, "nothing was compiled"
    assert not counters["graph_break"], dict(counters["graph_break"])  # whole layers, no fallback to Python
    assert [r["loss"] for r in compiled] == pytest.approx([r["loss"] for r in eager], rel=1e-5)
    for k, v in w_eager.items():
        torch.testing.assert_close(w_compiled[k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_recompute_trains_identically(tmp):
    plain, w_plain = run_inprocess(tmp, "plain", base_config())
    rc, w_rc = run_inprocess(tmp, "recompute", base_config(**{"training.recompute": "full"}))
    assert [r["loss"] for r in rc] == pytest.approx([r["loss"] for r in plain], rel=1e-6)
    for k, v in w_plain.items():
        torch.testing.assert_close(w_rc[k], v, rtol=1e-6, atol=1e-7, msg=k)


def test_recompute_keeps_only_layer_inputs_for_backward():
    """What autograd saves during one forward: far less with every layer recomputed, less with the
    first layer of each list only, and the parameter names are untouched."""
    from mm_core.engine.model_setup import recompute_layers
    from mm_core.plugins import get_plugin_manager
    from mm_qwen.tiny import make_inputs, tiny_config_dict

    config = tiny_config_dict(vision_depth=4, text_layers=4)
    spec = get_plugin_manager().model_for_hf_config(config)
    batch = make_inputs(config, [[("text", 5), ("image", (1, 8, 8)), ("text", 7)]], seed=1)

    def saved_bytes(first: int | None, recompute: bool) -> tuple[int, list[str]]:
        torch.manual_seed(0)
        model = spec.builder(config, vit_pp_layers=[4], llm_pp_layers=[4], pp_rank=0, device="cpu",
                             dtype=torch.float32)
        if recompute:
            assert recompute_layers(model, first) == (8 if first is None else 2)
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(**batch).sum().backward()
        return total[0], sorted(n for n, _ in model.named_parameters())

    plain, names = saved_bytes(None, False)
    every, names_rc = saved_bytes(None, True)
    first_only, _ = saved_bytes(1, True)
    assert names_rc == names
    assert every < first_only < plain
    assert every < 0.5 * plain
