"""Pipeline stages whose inputs need no gradient train like one process, on every declared torch.

torch 2.11's pipelining sends a gradient back for every tensor a stage received and fails with
"has gradients None and is expecting to send gradients" when one has none; newer releases send
zeros. The engine's stages receive the micro-batch index and a row count (never differentiated),
and a frozen or text-only stage may not use its hidden input at all. Covered here on gloo/CPU:
a fully frozen vision stage, a frozen vision encoder split over both stages, and the interleaved
schedule with frozen vision chunks; half of the synthetic micro-batches are text only.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from mm_core.engine.pipeline_grads import grad_anchor

_spec = importlib.util.spec_from_file_location("engine_helpers", Path(__file__).with_name("_helpers.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

RTOL, ATOL = 1e-5, 1e-6


def _frozen_vision(**parallel) -> dict:
    cfg = helpers.base_config("qwen")
    cfg["model"]["freeze"] = ["vision_encoder", "vision_projector"]
    cfg["parallel"].update(parallel)
    return cfg


def test_grad_anchor_gives_unused_inputs_zero_gradients():
    used = torch.randn(3, 2, requires_grad=True)
    unused = torch.randn(4, requires_grad=True)
    plain = torch.zeros(1)  # needs no gradient: left alone
    out = grad_anchor(used * 2.0, (used, unused, plain))
    out.sum().backward()
    torch.testing.assert_close(used.grad, torch.full((3, 2), 2.0))
    assert unused.grad is not None and not unused.grad.any()
    assert plain.grad is None


def test_grad_anchor_on_a_frozen_output_still_reaches_the_inputs():
    inp = torch.randn(2, 3, requires_grad=True)
    out = grad_anchor(torch.ones(2, 3).requires_grad_(), (inp,))  # a frozen stage's detached output
    (grad_in,) = torch.autograd.grad(out.sum(), (inp,))
    assert not grad_in.any()


@pytest.mark.distributed
def test_frozen_vision_pp2_layouts_train_like_one_process(tmp_path):
    ref, ref_weights = helpers.run_inprocess(tmp_path, "ref", _frozen_vision())
    whole = _frozen_vision(pp=2)  # stage 0: the whole (frozen) vision encoder, no optimizer there
    whole["model"].update(vit_pp_layers=[2, 0], llm_pp_layers=[0, 2])
    split = _frozen_vision(pp=2)  # the frozen encoder over both stages, the LLM on the second
    split["model"].update(vit_pp_layers=[1, 1], llm_pp_layers=[0, 2])
    vpp = _frozen_vision(pp=2, pp_schedule="Interleaved1F1B")  # frozen chunks 0 and 1, then the LLM
    vpp["model"].update(vit_pp_layers=[[1, 1], [0, 0]], llm_pp_layers=[[0, 0], [1, 1]])
    runs = {"whole": whole, "split": split, "vpp": vpp}
    proc = helpers.run_torchrun_many(tmp_path, 2, runs)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ref_losses = [r["loss"] for r in ref]
    for name in runs:
        out = tmp_path / name
        losses = [r["loss"] for r in helpers.read_records(out)]
        assert losses == pytest.approx(ref_losses, rel=RTOL), (name, losses, ref_losses)
        got = helpers.worker.merged_weights(out)
        assert set(got) == set(ref_weights), name
        for k, v in ref_weights.items():
            torch.testing.assert_close(got[k], v, rtol=RTOL, atol=ATOL, msg=f"{name}: {k}")
