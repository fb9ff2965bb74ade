"""`mm-run lora export-peft`: peft loads the export onto transformers' Qwen2.5-VL and gives the
logits of our merged model (skipped without peft)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from mm_core.cli.main import main

peft = pytest.importorskip("peft")

_spec = importlib.util.spec_from_file_location("lora_helpers", Path(__file__).with_name("_lora_helpers.py"))
lh = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lh)


def test_peft_loads_the_export_with_our_merged_logits(tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from mm_core.family.hf_config import load_hf_config

    hf_dir, batch, adapted = lh.base_and_adapters(tmp_path)
    out = tmp_path / "peft"
    assert main(["lora", "export-peft", "--adapters", str(tmp_path / "adapters"), "--base", str(hf_dir),
                 "--out", str(out)]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    names = config["target_modules"]
    # q/k/v and gate/up as separate HF modules; the vision tower's fused qkv as one of rank 3 x 2
    assert "model.language_model.layers.0.self_attn.k_proj" in names and "model.visual.blocks.1.mlp.up_proj" in names
    assert config["rank_pattern"] == {r"model\.visual\.blocks\.1\.attn\.qkv": 6}
    assert main(["lora", "merge", "--base", str(hf_dir), "--adapters", str(tmp_path / "adapters"),
                 "--out", str(tmp_path / "merged")]) == 0
    _, merged = lh.our_model(tmp_path / "merged", load_hf_config(tmp_path / "merged"))
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        base = model(**batch).logits
        loaded = peft.PeftModel.from_pretrained(model, str(out)).eval()
        got = loaded(**batch).logits
        ours = merged(**batch)
    assert not torch.allclose(got, base, atol=1e-3)  # the adapters are on
    torch.testing.assert_close(got, ours, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours, adapted, rtol=1e-5, atol=1e-5)
