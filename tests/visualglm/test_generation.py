"""VisualGLM generation: the prompt ``<img></img>问：{prompt}\\n答：`` through the processor, greedy decoding
with the KV cache equals decoding by recomputing the whole sequence, a left-padded batch equals each
prompt alone, and sampling is reproducible from its seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mm_core.generation import GenerationConfig, generate
from mm_visualglm.processor import VisualGLMProcessor
from mm_visualglm.tiny import save_tiny_model

NEW = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    from mm_core.nn.pretrained import load_pretrained

    torch.set_num_threads(1)
    d = save_tiny_model(tmp_path_factory.mktemp("vglm"), tokenizer=True, std=0.3)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    return VisualGLMProcessor.from_pretrained(d), load_pretrained(d, dtype=torch.float32).eval(), image


def no_cache_greedy(model, batch: dict, steps: int) -> list[int]:
    ids, out = batch["input_ids"], []
    for _ in range(steps):
        with torch.no_grad():
            nxt = model(**{**batch, "input_ids": ids, "attention_mask": torch.ones_like(ids)})[0, -1].argmax()
        out.append(int(nxt))
        ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return out


def test_prompt_layout(setup) -> None:
    proc, _, image = setup
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "图里有什么？"}]}])
    assert text == "<img></img>问：图里有什么？\n答："
    batch = proc(text=[text], images=[image])
    tok, cfg = proc.formatter.tokenizer, proc.formatter.model
    want = tok.encode("<img>") + [cfg.image_token_id] * cfg.image_length + tok.encode("</img>问：图里有什么？\n答：")
    assert batch["input_ids"][0].tolist() == want + [cfg.gmask_token_id, cfg.bos_token_id]
    assert batch["pixel_values"].shape == (1, 3, cfg.vision.image_size, cfg.vision.image_size)


def test_cached_greedy_equals_recomputing(setup) -> None:
    proc, model, image = setup
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "颜色？"}]}])
    batch = proc(text=[text], images=[image])
    ours = generate(model, batch, GenerationConfig(max_new_tokens=NEW, pad_token_id=proc.tokenizer.pad_token_id))[0]
    assert ours == no_cache_greedy(model, batch, NEW)


def test_left_padded_batch_equals_each_prompt_alone(setup) -> None:
    proc, model, image = setup
    texts = [proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "这是什么颜色的图片？"}]}]),
             proc.apply_chat_template([{"role": "user", "content": "你好"}])]
    cfg = GenerationConfig(max_new_tokens=NEW, pad_token_id=proc.tokenizer.pad_token_id)
    both = generate(model, proc(text=texts, images=[image]), cfg)
    assert both[0] == generate(model, proc(text=texts[:1], images=[image]), cfg)[0]
    assert both[1] == generate(model, proc(text=texts[1:]), cfg)[0]


def test_sampling_is_reproducible(setup) -> None:
    proc, model, image = setup
    batch = proc(text=[proc.apply_chat_template([{"role": "user", "content": "讲个故事"}])])
    cfg = GenerationConfig(max_new_tokens=NEW, do_sample=True, temperature=0.8, top_p=0.9, seed=3,
                           pad_token_id=proc.tokenizer.pad_token_id)
    first, again = generate(model, batch, cfg), generate(model, batch, cfg)
    assert first == again and len(first[0]) == NEW
    _ = image
