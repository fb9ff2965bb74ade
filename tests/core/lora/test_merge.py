"""`mm-run lora merge`: the merged checkpoint (HF, or mm at tp 2) gives the logits of base + adapters."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from mm_core.cli.main import main
from mm_core.errors import ConfigError
from mm_core.lora.fingerprint import weights_fingerprint

_spec = importlib.util.spec_from_file_location("lora_helpers", Path(__file__).with_name("_lora_helpers.py"))
lh = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lh)
CONV = "Qwen2_5_VLConverter"
our_model = lh.our_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora_merge")
    return (tmp, *lh.base_and_adapters(tmp))


def test_merged_hf_checkpoint_gives_base_plus_adapters_logits(setup):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from mm_core.family.hf_config import load_hf_config

    tmp, hf_dir, batch, adapted = setup
    out = tmp / "merged_hf"
    assert main(["lora", "merge", "--base", str(hf_dir), "--adapters", str(tmp / "adapters"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in hf_dir.iterdir())
    _, merged = our_model(out, load_hf_config(out))
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch), adapted, rtol=1e-5, atol=1e-5)
        base = our_model(hf_dir, load_hf_config(hf_dir))[1](**batch)
        assert not torch.allclose(base, adapted, atol=1e-3)
        ref = Qwen2_5_VLForConditionalGeneration.from_pretrained(out).eval()(**batch).logits
    torch.testing.assert_close(ref, adapted, rtol=1e-4, atol=1e-4)
    # the output exists now: a second merge refuses to touch it
    assert main(["lora", "merge", "--base", str(hf_dir), "--adapters", str(tmp / "adapters"), "--out", str(out)]) == 2


def test_merge_refuses_another_base_naming_both_fingerprints(setup):
    from mm_core.lora.merge_dirs import merge_checkpoint
    from mm_qwen.tiny import save_tiny_model

    tmp, hf_dir, _, _ = setup
    other = save_tiny_model(tmp / "other", vision_depth=2, text_layers=2, seed=5)
    with pytest.raises(ConfigError) as e:
        merge_checkpoint(other, tmp / "adapters", tmp / "never")
    assert weights_fingerprint(other) in str(e.value) and weights_fingerprint(hf_dir) in str(e.value)
    assert not (tmp / "never").exists()


def test_merge_into_an_mm_directory_at_tp2_keeps_its_layout(setup):
    from mm_convert.cli import main as convert
    from mm_core.checkpoint.api import hf_to_mm_rank, read_mm_rank

    tmp, hf_dir, _, _ = setup
    mm = tmp / "mm_tp2"
    assert convert([CONV, "hf_to_mm", "--cfg.mm_dir", str(mm), "--cfg.hf_config.hf_dir", str(hf_dir),
                    "--cfg.parallel_config.tp_size", "2", "--cfg.trust_remote_code", "False"]) == 0
    out = tmp / "merged_mm"
    # the adapters were saved from the HF directory: its mm copy (tp 2) is the same base, checked
    pp2 = tmp / "mm_pp2"
    assert convert([CONV, "hf_to_mm", "--cfg.mm_dir", str(pp2), "--cfg.hf_config.hf_dir", str(hf_dir),
                    "--cfg.parallel_config.vit_pp_layers", "[2,0]", "--cfg.parallel_config.llm_pp_layers", "[1,1]",
                    "--cfg.trust_remote_code", "False"]) == 0
    assert weights_fingerprint(mm, mm=True) == weights_fingerprint(pp2, mm=True) == weights_fingerprint(hf_dir)
    assert main(["lora", "merge", "--base", str(mm), "--adapters", str(tmp / "adapters"), "--out", str(out)]) == 0
    assert weights_fingerprint(out, mm=True) != weights_fingerprint(hf_dir)  # the merge changed its values
    merged_hf = tmp / "merged_hf_for_mm"
    assert main(["lora", "merge", "--base", str(hf_dir), "--adapters", str(tmp / "adapters"),
                 "--out", str(merged_hf)]) == 0
    for rank in (0, 1):
        got, _ = read_mm_rank(out, tp_rank=rank)
        want = hf_to_mm_rank(CONV, merged_hf, tp_size=2, tp_rank=rank)
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-6, msg=k)
