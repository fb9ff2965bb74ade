"""Tensor parallel (DTensor plan, gloo on CPU): tp=2 gives the single-process logits, both when the
plan distributes full weights (tied embeddings) and when each rank loads only its own mm-layout
shard from the HF dir through the converter (untied)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mm_qwen.tiny import make_inputs, save_tiny_model, tiny_config_dict

BATCH = [[("text", 3), ("image", (1, 8, 8)), ("text", 2), ("video", (2, 4, 4), 1.0)], [("text", 7)]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, hf_dir: str, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor.parallel import parallelize_module

        from mm_core.engine.tp_rules import plan_from_rules
        from mm_core.nn.pretrained import load_hf_weights
        from mm_qwen.model import build_model

        mesh = init_device_mesh("cpu", (world,))
        # the engine's path: whole weights on every rank, the plan distributes them
        torch.manual_seed(0)
        full = build_model(tiny_config_dict(tied=True), device="cpu")
        parallelize_module(full, mesh, plan_from_rules(full, "Qwen2_5_VLConverter", tiny_config_dict(tied=True), world))
        # each rank streams its own shard and assigns it into the DTensor locals
        ranks = build_model(hf_dir, device="meta")
        parallelize_module(ranks, mesh, plan_from_rules(ranks, "Qwen2_5_VLConverter", ranks.config.raw, world))
        load_hf_weights(ranks, hf_dir, "Qwen2_5_VLConverter", tp_size=world, tp_rank=rank)
        assert ranks.text_decoder.decoder.layers[0].mlp.linear_fc1.weight.to_local().shape[0] == \
            ranks.config.text.intermediate_size  # [gate_r; up_r]: half of 2 * I
        with torch.no_grad():
            out[rank] = (full.eval()(**make_inputs(tiny_config_dict(tied=True), BATCH)),
                         ranks.eval()(**make_inputs(tiny_config_dict(), BATCH)))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_tp2_equals_one_process(tmp_path):
    from mm_core.nn.pretrained import load_pretrained as load_model
    from mm_qwen.model import build_model

    hf_dir = save_tiny_model(tmp_path / "hf")
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, _free_port(), str(hf_dir), out), nprocs=2, join=True)
    torch.manual_seed(0)
    full = build_model(tiny_config_dict(tied=True), device="cpu").eval()
    single = load_model(hf_dir).eval()
    with torch.no_grad():
        expected = (full(**make_inputs(tiny_config_dict(tied=True), BATCH)),
                    single(**make_inputs(tiny_config_dict(), BATCH)))
    for rank in range(2):
        for got, want in zip(out[rank], expected):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
