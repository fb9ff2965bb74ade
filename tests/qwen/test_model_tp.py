"""Tensor parallel (DTensor plan, gloo on CPU): tp=2 gives the single-process logits, whether the
full weights are distributed by the plan or each rank loads only its own mm-layout shard."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mm_qwen.tiny import make_inputs, tiny_config_dict

BATCH = [[("text", 3), ("image", (1, 8, 8)), ("text", 2), ("video", (2, 4, 4), 1.0)], [("text", 7)]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, tied: bool, mode: str, hf_dir: str | None, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor.parallel import parallelize_module

        from mm_qwen.model import build_model
        from mm_qwen.parallelize import tp_plan

        config = tiny_config_dict(tied=tied)
        mesh = init_device_mesh("cpu", (world,))
        torch.manual_seed(0)
        if mode == "full":  # the engine's path: whole weights on every rank, the plan distributes them
            model = build_model(config, device="cpu")
            parallelize_module(model, mesh, tp_plan(model))
        else:  # each rank streams its own shard from the HF dir and assigns it into the DTensor locals
            from mm_qwen.loading import load_hf_weights

            model = build_model(hf_dir, device="meta")
            parallelize_module(model, mesh, tp_plan(model))
            load_hf_weights(model, hf_dir, tp_size=world, tp_rank=rank)
        with torch.no_grad():
            logits = model.eval()(**make_inputs(config, BATCH))
        out[rank] = logits
    finally:
        dist.destroy_process_group()


def _run_tp(tied: bool, mode: str, hf_dir=None) -> torch.Tensor:
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, _free_port(), tied, mode, str(hf_dir) if hf_dir else None, out), nprocs=2, join=True)
    torch.testing.assert_close(out[0], out[1])
    return out[0]


@pytest.mark.distributed
def test_tp2_from_full_weights_equals_one_process():
    from mm_qwen.model import build_model

    torch.manual_seed(0)
    ref = build_model(tiny_config_dict(tied=True), device="cpu").eval()
    with torch.no_grad():
        expected = ref(**make_inputs(tiny_config_dict(tied=True), BATCH))
    torch.testing.assert_close(_run_tp(True, "full"), expected, atol=1e-5, rtol=1e-5)
