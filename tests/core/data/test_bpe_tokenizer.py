"""mm_core.data.bpe_tokenizer's pieces on a tiny vocabulary (the real Qwen one is checked against
tiktoken in tests/qwen/test_formatter_tokenizer.py)."""

import pytest

from mm_core.data.bpe_tokenizer import add_tokens_in_order, byte_level_bpe


def _tiny():
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: b for b, ch in bytes_to_unicode().items()}
    vocab["ab"] = 256
    return byte_level_bpe(vocab, [("a", "b")], r"\s+|\S+")


def test_added_tokens_take_ids_in_the_callers_order():
    backend = _tiny()
    add_tokens_in_order(backend, [("<s>", True), ("<t>", False), ("<u>", True)], 257, what="tiny")
    assert backend.encode("ab<t> ab<u>").ids == [256, 258, 32, 256, 259]
    assert backend.decode([256, 32, 256], skip_special_tokens=False) == "ab ab"


def test_a_token_off_its_published_id_is_refused():
    with pytest.raises(RuntimeError, match=r"tiny: <s> got id 257, expected 300"):
        add_tokens_in_order(_tiny(), [("<s>", True)], 300, what="tiny")
