"""ChatGLM-6B's tokenizer layout on a tiny offline sentencepiece model, and the few-shot data through
the VisualGLM formatter in the original fine-tuning layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mm_core.data.config import AttrParameters, DataConfig
from mm_core.data.records import RawRecord, parse_record
from mm_visualglm.formatter import VisualGLMFormatter
from mm_visualglm.testing_tokenizer import save_tiny_tokenizer
from mm_visualglm.tiny import save_tiny_model
from mm_visualglm.tokenizer import ChatGLMTokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("vglm"), tokenizer=True)


def formatter(model_dir: Path) -> VisualGLMFormatter:
    cfg = DataConfig()
    cfg.preprocess_parameters.model_name_or_path = str(model_dir)
    return VisualGLMFormatter(cfg)


def test_tokenizer_has_chatglm_ids_and_text_rules(tmp_path: Path) -> None:
    tok = ChatGLMTokenizer(save_tiny_tokenizer(tmp_path, real_ids=True))
    assert (tok.mask_token_id, tok.gmask_token_id, tok.bos_token_id, tok.eos_token_id) == (130000, 130001, 130004, 130005)
    assert (tok.pad_token_id, tok.unk_token_id) == (3, 0)
    n, blank4, tab = (tok.sp.piece_to_id(p) for p in ("<n>", "<|blank_4|>", "<|tab|>"))
    ids = tok.encode("问：图片\n答：a    b\tc")
    assert n in ids and blank4 in ids and tab in ids
    assert tok.decode(ids) == "问：图片\n答：a    b\tc"
    assert tok.build_inputs([7, 8], [9]) == [7, 8, 130001, 130004, 9, 130005]


def test_a_file_without_chatglm_pieces_is_refused(tmp_path: Path) -> None:
    import sentencepiece as spm

    from mm_core.errors import ConfigError

    spm.SentencePieceTrainer.train(sentence_iterator=iter(["hello world"] * 20), model_prefix=str(tmp_path / "x"),
                                   vocab_size=30, minloglevel=2, hard_vocab_limit=False)
    with pytest.raises(ConfigError, match=r"\[MASK\]"):
        ChatGLMTokenizer(tmp_path / "x.model")


def test_fewshot_record_in_the_original_layout(model_dir: Path, tmp_path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    record = {"img": "a.png", "prompt": "这张图片的背景里有什么内容？", "label": "背景是一片蓝天。"}
    sample = parse_record(RawRecord("dataset.json:1", record), AttrParameters(), str(tmp_path))
    assert sample.messages[0]["content"].startswith("<image>") and len(sample.images) == 1
    f = formatter(model_dir)
    out = f.encode(sample)
    tok, cfg = f.tokenizer, f.model
    prompt = tok.encode("<img>") + [cfg.image_token_id] * cfg.image_length + tok.encode(
        "</img>问：这张图片的背景里有什么内容？\n答：")
    want = prompt + [cfg.gmask_token_id, cfg.bos_token_id] + tok.encode("背景是一片蓝天。") + [cfg.eos_token_id]
    assert out["input_ids"] == want
    c = want.index(cfg.bos_token_id)
    assert out["labels"] == [-100] * c + want[c:]
    assert out["pixel_values"].shape == (1, 3, cfg.vision.image_size, cfg.vision.image_size)
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)
    img = Image.open(tmp_path / "a.png").convert("RGB").resize((cfg.vision.image_size,) * 2, Image.BICUBIC)
    ref = (torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1) - mean) / std
    torch.testing.assert_close(out["pixel_values"][0], ref)


def test_prompt_cut_to_63_and_label_to_254(model_dir: Path) -> None:
    from mm_core.data.records import Sample

    f = formatter(model_dir)
    tok, cfg = f.tokenizer, f.model
    sample = Sample([{"role": "user", "content": "<image>" + "猫" * 200}, {"role": "assistant", "content": "狗" * 400}],
                    ["unused.png"], [])
    out = f.encode(sample, pixels=False)
    c = out["input_ids"].index(cfg.bos_token_id)
    assert c == 63 + 2 - 1  # 63 prompt ids, then [gMASK] at 63 and <sop> at 64
    assert out["input_ids"][63] == cfg.gmask_token_id
    assert len(out["input_ids"]) - c - 1 == 254 + 1  # 254 reply ids and <eop>
    assert out["input_ids"][-1] == cfg.eos_token_id
    assert sum(1 for t in out["input_ids"] if t == cfg.image_token_id) == cfg.image_length
    _ = tok


def test_history_turns_and_text_only(model_dir: Path) -> None:
    from mm_core.data.records import Sample

    f = formatter(model_dir)
    tok = f.tokenizer
    msgs = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
            {"role": "user", "content": "再见"}, {"role": "assistant", "content": "再见。"}]
    out = f.encode(Sample(msgs, [], []), pixels=False)
    assert out["input_ids"][: -len(tok.encode("再见。")) - 3] == tok.encode("问：你好\n答：你好！\n问：再见\n答：")
    assert json.dumps(f.dummy_vision()["pixel_values"].shape[1:]) == json.dumps((3, 28, 28))
