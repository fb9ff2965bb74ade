"""The seed's GLM-4.5V flow in one process: ``ExpertMergeDcpConverter hf_to_dcp``, then ``mm-run
finetune`` (examples/glm4_5v/finetune_tiny.yaml, 2 steps) with ``output.load`` on the converted
save dir, then ``dcp_to_hf`` of the trainer's iteration. The model starts from ``random_init``, so
its weights can only come from the converted checkpoint (read through ``mm_glm.reference_layout``).
The README's quick start runs the same flow on 2 processes with expert parallel 2
(tests/readme/test_quickstart.py); both use ``mm_glm.seed_flow_checks``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from mm_convert.cli import main as mm_convert

ROOT = Path(__file__).resolve().parents[2]
FROZEN = ("model.visual.",)  # vision encoder and projector (merger): frozen as in the seed recipe


@pytest.fixture(scope="module")
def hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mm_glm.tiny_moe import save_tiny_model

    with torch.random.fork_rng(devices=[]):
        return save_tiny_model(tmp_path_factory.mktemp("hf"), vision_depth=1, text_layers=3, experts=4, seed=3)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_convert_finetune_convert_back_in_one_process(hf: Path, tmp_path: Path) -> None:
    from mm_core.engine.finetune import main as finetune
    from mm_glm.seed_flow_checks import check_seed_flow, hf_tensors

    original = hf_tensors(hf)
    mm = tmp_path / "ckpt/mm_path/GLM-4.5V"
    assert mm_convert(["ExpertMergeDcpConverter", "hf_to_dcp", "--hf_dir", str(hf), "--save_dir", str(mm)]) == 0
    cfg = yaml.safe_load((ROOT / "examples/glm4_5v/finetune_tiny.yaml").read_text())
    cfg["model"] = {"hf_dir": str(hf), "random_init": True, "freeze": ["vision_encoder", "vision_projector"]}
    cfg["training"].update(train_iters=2, warmup_iters=0)
    cfg["output"] = {"load": str(mm), "save": str(tmp_path / "save_dir"), "progress_bar": False,
                     "metrics_file": str(tmp_path / "metrics.jsonl")}
    (tmp_path / "finetune.yaml").write_text(yaml.safe_dump(cfg))
    assert finetune(["--config", str(tmp_path / "finetune.yaml")]) == 0
    out = tmp_path / "hf_out"
    assert mm_convert(["ExpertMergeDcpConverter", "dcp_to_hf", "--hf_dir", str(hf), "--dcp_dir",
                       str(tmp_path / "save_dir/iter_0000002"), "--save_dir", str(out)]) == 0
    changed = check_seed_flow(out, tmp_path / "save_dir/iter_0000002", original, FROZEN, cfg["training"]["lr"], 2)
    assert any(".mlp.experts." in k for k in changed)  # the experts trained (and came back per expert)
    assert (out / "config.json").read_text() == (hf / "config.json").read_text()


def test_a_checkpoint_dir_given_as_output_load_is_refused_with_its_parent(tmp_path: Path) -> None:
    from mm_core.engine.checkpoint import latest_iteration

    release = tmp_path / "GLM-4.5V" / "release"
    release.mkdir(parents=True)
    (release / ".metadata").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="give the directory above it"):
        latest_iteration(release)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_foreign_sources_fill_weights_by_formula_and_name_what_is_missing(tmp_path: Path) -> None:
    """mm_core's reader on its own: a fused q/k/v (group-interleaved) and a merged expert tensor viewed
    as a stack come out as the formula says; a missing stored tensor and an impossible view are named."""
    import torch.distributed.checkpoint as dcp

    from mm_core.checkpoint.ops import GroupInterleave
    from mm_core.engine.foreign_checkpoint import StoredSource, load_foreign
    from mm_core.errors import ConfigError

    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(8, 3, generator=g), torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    merged = torch.randn(4 * 5, 6, generator=g)  # 4 experts of [5, 6]
    dcp.save({"model": {"q": q, "k": k, "v": v, "m": merged}}, checkpoint_id=str(tmp_path), no_dist=True)
    op = GroupInterleave(groups=2, q_rows=4, kv_rows=2)
    sources = {"qkv": StoredSource(("model.q", "model.k", "model.v"), op),
               "w": StoredSource(("model.m",), views=((4, 5, 6),))}
    targets = {"qkv": torch.zeros(16, 3), "w": torch.zeros(4, 5, 6, dtype=torch.float64)}
    load_foreign(tmp_path, targets, sources, "test layout")
    want = torch.cat([q[:4], k[:2], v[:2], q[4:], k[2:], v[2:]])  # [q_g0, k_g0, v_g0, q_g1, k_g1, v_g1]
    assert torch.equal(targets["qkv"], want)
    assert torch.equal(targets["w"], merged.double().view(4, 5, 6))
    with pytest.raises(FileNotFoundError, match=r"missing tensors \['model.gone'\]"):
        load_foreign(tmp_path, {"x": torch.zeros(8, 3)}, {"x": StoredSource(("model.gone",))}, "test layout")
    with pytest.raises(ConfigError, match="cannot be viewed as"):
        load_foreign(tmp_path, {"w": torch.zeros(4, 5, 5)}, {"w": StoredSource(("model.m",), views=((4, 5, 5),))},
                     "test layout")
