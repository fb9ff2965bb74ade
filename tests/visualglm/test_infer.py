"""`mm-run infer` on a tiny VisualGLM (its own processor through ModelSpec.processor): an image prompt and
a JSONL batch of image and text prompts give the tokens of greedy generation on the processor's batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def test_mm_run_infer_single_and_batch(tmp_path: Path, capsys) -> None:
    from mm_core.cli.main import main
    from mm_core.generation import GenerationConfig, generate
    from mm_core.nn.pretrained import load_pretrained
    from mm_visualglm.processor import VisualGLMProcessor
    from mm_visualglm.tiny import save_tiny_model

    torch.set_num_threads(1)
    d = save_tiny_model(tmp_path / "model", tokenizer=True, std=0.3)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    records = [{"image": "a.png", "prompt": "这是什么颜色？"}, {"prompt": "你好"}]
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n")
    assert main(["infer", "--model", str(d), "--input", str(tmp_path / "q.jsonl"), "--output", str(tmp_path / "a.jsonl"),
                 "--max-new-tokens", "5"]) == 0
    got = [json.loads(line)["token_ids"] for line in (tmp_path / "a.jsonl").read_text().splitlines()]

    proc, model = VisualGLMProcessor.from_pretrained(d), load_pretrained(d, dtype=torch.float32).eval()
    image = Image.open(tmp_path / "a.png").convert("RGB")
    texts = [proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "这是什么颜色？"}]}]),
             proc.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "你好"}]}])]
    eos = proc.tokenizer.eos_token_id
    want = generate(model, proc(text=texts, images=[image]),
                    GenerationConfig(max_new_tokens=5, stop_token_ids=[eos], pad_token_id=proc.tokenizer.pad_token_id))
    assert got == want
    capsys.readouterr()
    assert main(["infer", "--model", str(d), "--image", str(tmp_path / "a.png"), "--prompt", "这是什么颜色？",
                 "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.strip() == proc.tokenizer.decode(want[0]).strip()
