"""``ExpertMergeDcpConverter`` with the reference's command lines: HF -> DCP (merged, transposed
experts, ``model.`` prefix, ``release`` + latest file) -> HF bit-exact, with a fresh index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from mm_convert.cli import main


def _tensors(d: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(str(f), "pt") as s:
            out.update({k: s.get_tensor(k) for k in s.keys()})
    return out


@pytest.fixture(scope="module")
def hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mm_glm.tiny_moe import save_tiny_model

    with torch.random.fork_rng(devices=[]):
        d = save_tiny_model(tmp_path_factory.mktemp("hf"), vision_depth=1, text_layers=3, experts=4)
    (d / "tokenizer_config.json").write_text("{}\n")  # a non-weight file to carry over
    return d


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_hf_to_dcp_then_dcp_to_hf_is_bit_exact(hf: Path, tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    save = tmp_path / "mm_path" / "GLM-4.5V"
    assert main(["ExpertMergeDcpConverter", "hf_to_dcp", "--hf_dir", str(hf), "--save_dir", str(save)]) == 0
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "release"
    md = dcp.FileSystemReader(str(save / "release")).read_metadata().state_dict_metadata
    src = _tensors(hf)
    e, i, h = 4, 48, 128
    key = "model.model.model.language_model.layers.1.mlp.experts.gate_up_proj"  # DCP's flattened {"model": ...}
    assert tuple(md[key].size) == (e * h, 2 * i)
    assert tuple(md["model.model.model.language_model.layers.2.mlp.experts.down_proj"].size) == (e * i, h)
    assert "model.model.lm_head.weight" in md and "checkpoint_version" in md
    assert not any(".experts.0." in k for k in md)
    # the merged layout itself: expert 2's block is [gate_2; up_2] transposed
    got = {key: torch.empty(e * h, 2 * i)}
    dcp.load(got, storage_reader=dcp.FileSystemReader(str(save / "release")), no_dist=True)
    layer = "model.language_model.layers.1.mlp.experts.2."
    want = torch.cat((src[layer + "gate_proj.weight"], src[layer + "up_proj.weight"])).t()
    assert torch.equal(got[key].view(e, h, 2 * i)[2], want)

    out = tmp_path / "hf_out"
    assert main(["ExpertMergeDcpConverter", "dcp_to_hf", "--hf_dir", str(hf), "--dcp_dir", str(save / "release"),
                 "--save_dir", str(out), "--max_shard_size_gb", "0.0001", "--block_mb", "0.05"]) == 0  # 1 expert a read
    back = _tensors(out)
    assert sorted(back) == sorted(src)
    for k, t in src.items():
        assert back[k].dtype == t.dtype and torch.equal(back[k], t), k
    index = json.loads((out / "model.safetensors.index.json").read_text())  # several shards: a fresh index
    assert sorted(index["weight_map"]) == sorted(src) and len(set(index["weight_map"].values())) > 1
    assert (out / "config.json").read_text() == (hf / "config.json").read_text()
    assert (out / "tokenizer_config.json").is_file()


def test_missing_expert_and_foreign_checkpoint_are_named(hf: Path, tmp_path: Path, capsys) -> None:
    import shutil

    from safetensors.torch import save_file

    broken = tmp_path / "broken"
    shutil.copytree(hf, broken)
    tensors = _tensors(hf)
    del tensors["model.language_model.layers.2.mlp.experts.3.down_proj.weight"]
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    assert main(["ExpertMergeDcpConverter", "hf_to_dcp", "--hf_dir", str(broken), "--save_dir",
                 str(tmp_path / "x")]) == 1
    assert "layer 2 lacks 1 expert tensor(s)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


MEMORY_SCRIPT = """
import sys
from mm_convert.cli import main

def status(field):  # kB figures of /proc/self/status (Linux)
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field))

warm, verb, args = sys.argv[1], sys.argv[2], sys.argv[3:]
# the same conversion of a small model first: imports and parsers are in memory before the baseline
assert main(["ExpertMergeDcpConverter", verb, *[a.replace("/big/", "/small/") for a in args]]) == 0
open("/proc/self/clear_refs", "w").write("5")  # restart the peak (VmHWM) from the resident size now
base = status("VmRSS:")
assert main(["ExpertMergeDcpConverter", verb, *args]) == 0
print(status("VmHWM:") - base)
"""


def _expert_dir(path: Path, e: int, h: int, i: int, vocab: int) -> dict[str, torch.Tensor]:
    """config.json, one MoE layer's per-expert tensors (what the converter merges) and a word
    embedding of ``vocab`` rows (moved as is, but in row blocks when large)."""
    from safetensors.torch import save_file

    from mm_glm.tiny_moe import tiny_moe_config_dict

    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(tiny_moe_config_dict(experts=e, moe_intermediate=i, hidden=h,
                                                                      text_layers=2)))
    g = torch.Generator().manual_seed(0)
    prefix = "model.language_model.layers.1.mlp.experts."
    tensors = {"model.language_model.embed_tokens.weight": torch.randn(vocab, h, generator=g)}
    for x in range(e):
        tensors[f"{prefix}{x}.gate_proj.weight"] = torch.randn(i, h, generator=g)
        tensors[f"{prefix}{x}.up_proj.weight"] = torch.randn(i, h, generator=g)
        tensors[f"{prefix}{x}.down_proj.weight"] = torch.randn(h, i, generator=g)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    return tensors


def test_merged_experts_never_exist_whole_in_memory(tmp_path: Path) -> None:
    """One MoE layer of 64 experts (merged gate/up: 128 MiB) and a 64 MiB word embedding: both
    directions grow the peak RSS by far less than either (they move one expert, 2 MiB, or one read
    block at a time; the embedding in 2 MiB row blocks, as GLM-4.5V's 1.24 GB one in 64 MiB)."""
    import subprocess
    import sys

    e, h, i = 64, 1024, 256
    tensors = _expert_dir(tmp_path / "big" / "hf", e, h, i, vocab=16384)
    _expert_dir(tmp_path / "small" / "hf", 2, 64, 16, vocab=8)
    merged = e * h * 2 * i * 4

    def peak_growth(verb: str, *args: str) -> int:
        proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, "warm", verb, *args], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return int(proc.stdout.strip().splitlines()[-1])

    big = tmp_path / "big"
    grow_in = peak_growth("hf_to_dcp", "--hf_dir", str(big / "hf"), "--save_dir", str(big / "dcp"), "--block_mb", "2")
    grow_out = peak_growth("dcp_to_hf", "--hf_dir", str(big / "hf"), "--dcp_dir", str(big / "dcp"), "--save_dir",
                           str(big / "out"), "--block_mb", "2")
    assert grow_in < merged / 4 and grow_out < merged / 4, (grow_in, grow_out, merged)
    back = _tensors(big / "out")
    assert all(torch.equal(back[k], t) for k, t in tensors.items()) and len(back) == len(tensors)
