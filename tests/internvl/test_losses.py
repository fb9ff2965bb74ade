"""InternVL users' loss types on InternVL data: the engine's first-step loss of `mm-run finetune`
(InternVL records through the internvl2_5 formatter, tiled images) equals the loss type's formula
computed from transformers' InternVLForConditionalGeneration logits on the same micro-batch.

- ``square_loss`` (InternVL's own): sum_b sum_t ce_bt / sqrt(n_b), over sum_b sqrt(n_b);
- ``per_sample_loss``: the mean over samples of each sample's token mean.

The three records' answers differ a lot in length, so the two weightings (and per-token) differ.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

ANSWERS = ["Red.", "A small blue square on a white ground, drawn near the top left corner of the picture.",
           "Two green circles and one yellow triangle."]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny InternVL3 with the offline processor, three InternVL jsonl records and their images."""
    from PIL import Image

    from mm_internvl.tiny import save_tiny_model
    from mm_internvl.tokenizer import TOKEN_IDS, VOCAB_SIZE, save_offline_processor

    root = tmp_path_factory.mktemp("internvl_losses")
    hf = save_tiny_model(root / "hf", seed=2, vocab_size=VOCAB_SIZE)
    cfg = json.loads((hf / "config.json").read_text())
    cfg["image_token_id"] = TOKEN_IDS["<IMG_CONTEXT>"]
    (hf / "config.json").write_text(json.dumps(cfg))
    save_offline_processor(hf, tile_size=56, image_seq_length=4)
    rng = np.random.default_rng(0)
    records = []
    for i, answer in enumerate(ANSWERS):
        Image.fromarray(rng.integers(0, 255, (50 + 20 * i, 90, 3), dtype=np.uint8)).save(root / f"{i}.png")
        records.append({"image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the picture?"}, {"from": "gpt", "value": answer}]})
    (root / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    data = {"preprocess_parameters": {"min_dynamic_patch": 1, "max_dynamic_patch": 2},
            "basic_parameters": {"template": "internvl2_5", "data_path": str(root / "records.jsonl"),
                                 "data_folder": str(root), "packing": False},
            "dataloader_param": {"num_workers": 0, "shuffle": False}}
    return root, hf, data


def _engine_first_loss(root, hf, data, loss_type: str) -> float:
    config = {"model": {"hf_dir": str(hf)}, "data": {"config": data}, "parallel": {"device": "cpu"},
              "training": {"micro_batch_size": 3, "global_batch_size": 3, "seq_length": 512, "train_iters": 1,
                           "lr": 1e-6, "dtype": "fp32", "seed": 0, "loss_type": loss_type},
              "output": {"progress_bar": False, "metrics_file": str(root / f"{loss_type}.jsonl")}}
    (root / f"{loss_type}.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "mm_core.cli.main", "finetune", "--config",
                           str(root / f"{loss_type}.yaml")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (root / f"{loss_type}.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r][0]


def _reference_losses(hf, data) -> dict[str, float]:
    """Each loss type's formula on transformers' logits for the engine's micro-batch (all 3 records)."""
    from transformers import InternVLForConditionalGeneration

    from mm_core.data import build_dataloader
    from mm_core.data.config import load_data_config, with_model_dir

    loader = build_dataloader(with_model_dir(load_data_config(data), str(hf)), seq_len=512, micro_batch_size=3,
                              seed=0)
    batch = next(loader)
    model = InternVLForConditionalGeneration.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       pixel_values=batch["pixel_values"]).logits
    targets = batch["labels"][:, 1:]
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets.clamp(min=0), reduction="none")
    ce = ce * (targets != -100)
    n = (targets != -100).sum(1).double()
    per_sample = ce.sum(1).double()
    assert len(set(n.tolist())) == 3, n  # answer lengths differ: the weightings differ
    return {"square_loss": float((per_sample / n.sqrt()).sum() / n.sqrt().sum()),
            "per_sample_loss": float((per_sample / n).mean()),
            "per_token_loss": float(per_sample.sum() / n.sum())}


@pytest.mark.slow
def test_square_and_per_sample_loss_on_internvl_records_match_the_formula(setup):
    root, hf, data = setup
    ref = _reference_losses(hf, data)
    assert abs(ref["square_loss"] - ref["per_sample_loss"]) > 1e-3  # the check can tell them apart
    for loss_type in ("square_loss", "per_sample_loss"):
        got = _engine_first_loss(root, hf, data, loss_type)
        assert got == pytest.approx(ref[loss_type], rel=2e-5), (loss_type, got, ref)
