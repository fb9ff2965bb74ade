"""`mm-run finetune` end to end: example configs, the launcher, HF loading, DCP -> HF, dead workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mm_core.engine.config import parse_finetune_config, validate

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "qwen2_5_vl"
# layer counts of the real checkpoints (vision depth, LLM layers, tied embeddings)
SIZES = {"3b": (32, 36, True), "3b_1gpu": (32, 36, True), "7b": (32, 28, False), "72b": (32, 80, False)}


@pytest.mark.parametrize("size,world", [("3b", 8), ("3b_1gpu", 1), ("7b", 8), ("72b", 32), ("tiny", 1)])
def test_examples_are_valid_at_their_world_size(size, world):
    cfg = parse_finetune_config(["--config", str(EXAMPLES / f"finetune_{size}.yaml")])
    hf = cfg.model.hf_config
    if size in SIZES:
        vit, llm, tied = SIZES[size]
        hf = {"model_type": "qwen2_5_vl", "vision_config": {"depth": vit}, "num_hidden_layers": llm,
              "tie_word_embeddings": tied}  # model_type: the data template is checked against its spec
    layout = validate(cfg, world, hf)
    assert layout.dp * layout.tp * layout.pp == world


def test_sequence_parallel_without_tensor_parallel_is_refused():
    from mm_core.errors import ConfigError

    cfg = parse_finetune_config(["--config", str(EXAMPLES / "finetune_tiny.yaml"), "--parallel.sequence_parallel",
                                 "true", "--parallel.tp", "1"])
    with pytest.raises(ConfigError, match="parallel.sequence_parallel"):
        validate(cfg, 1, cfg.model.hf_config)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _config(tmp: Path, hf_dir: Path, **training) -> Path:
    cfg = {
        "model": {"hf_dir": str(hf_dir)},
        "data": {"source": "synthetic", "synthetic_samples": 16},
        "parallel": {"device": "cpu"},
        "training": {"micro_batch_size": 1, "global_batch_size": 2, "seq_length": 32, "train_iters": 2,
                     "lr": 1e-3, "dtype": "fp32", "loss_type": "per_token_loss", "compute_mode": "chunk",
                     "chunk_size": 16, **training},
        "output": {"save": str(tmp / "save"), "log_interval": 1, "progress_bar": False},
    }
    path = tmp / "ft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from mm_qwen.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("hf") / "tiny", vision_depth=2, text_layers=2)


def test_launcher_trains_from_hf_dir_and_the_checkpoint_converts_back(tmp_path, hf_dir):
    # tp=2: each rank streams only its shards from the HF dir; the checkpoint holds whole tensors
    cfg = _config(tmp_path, hf_dir, global_batch_size=1)
    data = yaml.safe_load(cfg.read_text())
    data["parallel"]["tp"] = 2
    cfg.write_text(yaml.safe_dump(data))
    proc = subprocess.run([sys.executable, "-m", "mm_core.cli.main", "finetune", "--nproc-per-node", "2",
                           "--config", str(cfg)],
                          capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    save = tmp_path / "save"
    assert (save / "latest_checkpointed_iteration.txt").read_text() == "2"
    header, *lines = [json.loads(x) for x in (save / "metrics.jsonl").read_text().splitlines()]
    assert header["record"] == "run_header" and header["world_size"] == 2
    assert [r["step"] for r in lines] == [1, 2] and all(r["loss"] > 0 for r in lines)
    from mm_convert.cli import main as convert_main

    out = tmp_path / "hf_out"
    assert convert_main(["Qwen2_5_VLConverter", "dcp_to_hf", "--hf_dir", str(hf_dir), "--dcp_dir",
                         str(save / "iter_0000002"), "--save_dir", str(out)]) == 0
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(save / "iter_0000002", tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=False)["model"]
    exported = load_file(out / "model.safetensors")
    before = load_file(hf_dir / "model.safetensors")
    # the trained (changed) weights are what was exported, in HF names
    emb_new, emb_old = exported["model.embed_tokens.weight"], before["model.embed_tokens.weight"]
    assert not torch.equal(emb_new, emb_old)
    torch.testing.assert_close(emb_new, saved["text_decoder.embedding.word_embeddings.weight"], rtol=0, atol=0)
    # the gated fc1 went back to [gate; up]: it stays close to the original (a few small updates)
    for key in ("model.layers.0.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight"):
        assert (exported[key] - before[key]).abs().max() < 0.05, key


def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(p.name))
    return out


def test_a_dead_worker_stops_the_job(tmp_path, hf_dir):
    cfg = _config(tmp_path, hf_dir, train_iters=100000)
    proc = subprocess.Popen([sys.executable, "-m", "mm_core.cli.main", "finetune", "--nproc-per-node", "2",
                             "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    metrics = tmp_path / "save" / "metrics.jsonl"
    try:
        deadline = time.time() + 240
        while not (metrics.is_file() and metrics.read_text().strip()) and time.time() < deadline:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.5)
        workers = [c for c in _children(proc.pid) if b"mm_core.engine.finetune" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(workers) == 2, workers
        os.kill(workers[1], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "FAILED" in err or "failed" in err
