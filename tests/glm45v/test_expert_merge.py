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
                 "--save_dir", str(out), "--max_shard_size_gb", "0.0001"]) == 0
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
