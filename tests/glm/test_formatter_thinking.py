"""GLM-4.1V-Thinking replies: the loss covers the thinking or only the answer, as the data config says;
`mm-run infer` shows the thinking apart from the answer."""

from __future__ import annotations

import json

import pytest

from mm_core.batch import IGNORE_INDEX
from mm_core.data.config import data_config_from_dict
from mm_core.data.records import Sample

PIXELS = {"image_min_pixels": 3136, "image_max_pixels": 50176, "video_min_pixels": 3136, "video_max_pixels": 12544}
REPLIES = ("<think>A square, red.</think><answer>Red.</answer>",
           "<think>\nIt was red before.\n</think>\n<answer>Still red.</answer>")
MESSAGES = [{"role": "user", "content": "What colour is the square?"}, {"role": "assistant", "content": REPLIES[0]},
            {"role": "user", "content": "And now?"}, {"role": "assistant", "content": REPLIES[1]}]


@pytest.fixture(scope="module")
def proc_dir(tmp_path_factory):
    from mm_glm.testing_tokenizer import save_glm_processor

    return save_glm_processor(tmp_path_factory.mktemp("glm_proc"), **PIXELS)


def formatter(proc_dir, **basic):
    """The formatter of a user's data config (the reference's data.json layout)."""
    from mm_glm.formatter import Glm4vFormatter

    cfg = data_config_from_dict({"dataset_param": {
        "preprocess_parameters": {"model_name_or_path": str(proc_dir), **PIXELS},
        "basic_parameters": {"template": "glm4v", **basic}}})
    return Glm4vFormatter(cfg)


def learnt(fmt, out) -> str:
    """The labelled tokens, decoded (special tokens kept)."""
    return fmt.tokenizer.decode([t for t in out["labels"] if t != IGNORE_INDEX])


def test_default_trains_on_the_whole_reply(proc_dir):
    fmt = formatter(proc_dir)
    assert learnt(fmt, fmt.encode(Sample(MESSAGES))) == REPLIES[0] + "<|user|>" + REPLIES[1] + "<|endoftext|>"


def test_train_on_thinking_false_leaves_the_thinking_out_of_the_loss(proc_dir):
    fmt = formatter(proc_dir, train_on_thinking=False)
    out = fmt.encode(Sample(MESSAGES))
    assert learnt(fmt, out) == "<answer>Red.</answer><|user|>\n<answer>Still red.</answer><|endoftext|>"
    assert out["input_ids"] == formatter(proc_dir).encode(Sample(MESSAGES))["input_ids"]  # same text, fewer labels
    last_only = formatter(proc_dir, train_on_thinking=False, mask_history=True)
    assert learnt(last_only, last_only.encode(Sample(MESSAGES))) == "\n<answer>Still red.</answer><|endoftext|>"


def test_a_reply_without_thinking_is_unaffected(proc_dir):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    fmt = formatter(proc_dir, train_on_thinking=False)
    assert learnt(fmt, fmt.encode(Sample(messages))) == "Hello.<|endoftext|>"


def test_infer_shows_the_thinking_apart_from_the_answer(proc_dir, tmp_path, monkeypatch, capsys):
    """`mm-run infer` end to end on the GLM processor; the model's reply is fixed (no weights needed)."""
    from pathlib import Path

    from transformers import AutoTokenizer

    import mm_core.cli.infer_model
    import mm_core.generation
    import mm_core.nn.pretrained
    from mm_core.cli.main import main

    tok = AutoTokenizer.from_pretrained(proc_dir)
    reply = tok("<think>The square is red.\nNothing else.</think><answer>Red.</answer>",
                add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|user|>")]
    seen = {}

    class FakeModel:
        def eval(self):
            return self

    def fake_generate(model, batch, cfg, tp_group=None):
        seen["prompt"] = tok.decode(batch["input_ids"][0])
        seen["stops"] = cfg.stop_token_ids
        return [list(reply)]

    monkeypatch.setattr(mm_core.cli.infer_model, "resolve_model", Path)  # a processor-only directory, no weights
    monkeypatch.setattr(mm_core.nn.pretrained, "load_pretrained", lambda *a, **k: FakeModel())
    monkeypatch.setattr(mm_core.generation, "generate", fake_generate)
    assert main(["infer", "--model", str(proc_dir), "--prompt", "What colour is the square?"]) == 0
    out = capsys.readouterr().out
    assert out == "thinking:\n  The square is red.\n  Nothing else.\nanswer:\nRed.\n"
    assert seen["prompt"] == "[gMASK]<sop><|user|>\nWhat colour is the square?<|assistant|>\n"
    answers = tmp_path / "answers.jsonl"
    assert main(["infer", "--model", str(proc_dir), "--prompt", "Colour?", "--output", str(answers)]) == 0
    record = json.loads(answers.read_text())
    assert record["answer"] == "Red." and record["thinking"] == "The square is red.\nNothing else."
    assert record["token_ids"] == reply


def test_reasoning_tags_survive_decoding_where_the_tokenizer_makes_them_special(proc_dir):
    from transformers import AutoTokenizer

    from mm_core.cli.infer_thinking import decode_reply, display_text

    tok = AutoTokenizer.from_pretrained(proc_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<answer>", "</answer>"]})
    ids = tok("<think>Hm.</think><answer>Red.</answer>", add_special_tokens=False)["input_ids"]
    ids.append(tok.convert_tokens_to_ids("<|user|>"))
    assert tok.decode(ids, skip_special_tokens=True) == "<think>Hm.</think>Red."  # what plain decoding loses
    assert decode_reply(tok, ids) == "<think>Hm.</think><answer>Red.</answer>"
    assert display_text(decode_reply(tok, ids)) == "thinking:\n  Hm.\nanswer:\nRed."
    plain = tok("Just red.", add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|endoftext|>")]
    assert decode_reply(tok, plain) == "Just red."
