"""`mm-run infer` on a transformers-saved tiny GLM-4.5V (MoE, offline GLM processor in the model dir)
gives transformers' greedy tokens for an image prompt."""

from __future__ import annotations

import json

import torch

from mm_core.cli.main import main
from mm_core.testing.hf_reference import greedy_replies
from mm_core.testing.media import write_images


def test_image_prompt_matches_transformers(tmp_path, capsys):
    from transformers import AutoProcessor, Glm4vMoeForConditionalGeneration

    from mm_core.cli.infer import prepare_batch, stop_token_ids
    from mm_glm.tiny_moe import save_tiny_model

    torch.set_num_threads(1)
    hf_dir = save_tiny_model(tmp_path / "hf", with_processor=True, hidden=64, seed=3, std=0.2)
    image = write_images(tmp_path, {"a.png": (60, 90)}) / "a.png"
    out = tmp_path / "answers.jsonl"
    assert main(["infer", "--model", str(hf_dir), "--image", str(image), "--prompt", "Describe this image.",
                 "--max-new-tokens", "8", "--output", str(out)]) == 0
    ours = json.loads(out.read_text())

    processor = AutoProcessor.from_pretrained(hf_dir)
    model = Glm4vMoeForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
    record = {"prompt": "Describe this image.", "images": [str(image)], "videos": [], "system": None}
    (ref,) = greedy_replies(model, prepare_batch(processor, [record]), stop_token_ids(hf_dir, processor.tokenizer), 8)
    assert ours["token_ids"] == ref and len(ref) == 8
    assert capsys.readouterr().out.strip() == ours["answer"].strip()
