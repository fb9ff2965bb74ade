"""An offline GLM-4.1V processor directory for tests: tokenizer, chat template, image and video processors.

No GLM tokenizer ships on PyPI, so tests build one with ``tokenizers``: a byte-level BPE with the
GLM-4 split pattern, a small merge table of common English pieces, filler entries up to the size of
the GLM-4 vocabulary (151329), and the GLM special tokens at their published ids, so the ids a
model config names (``image_token_id`` 151343, ...) mean what they mean in the real checkpoint.
The merges are not GLM's: ids of ordinary text differ from the real tokenizer, but the formatter
and ``Glm4vProcessor`` read the same ``tokenizer.json``, which is what the tests compare. Real runs
read ``tokenizer.json`` from the model's HF directory.

The chat template renders the GLM-4.1V conversation format as the published checkpoint's does:
``[gMASK]<sop>``, ``<|system|>\\n``, ``<|user|>\\n`` (images and videos as one placeholder each, which
the processor expands), ``<|assistant|>\\n``, no end-of-turn token.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

# GLM-4's special tokens in id order from 151329, then GLM-4.1V's image and video placeholders.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
    "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
    "<|end_of_video|>", "<|image|>", "<|video|>",
)
FIRST_SPECIAL_ID = 151329
TOKEN_IDS: dict[str, int] = {tok: FIRST_SPECIAL_ID + i for i, tok in enumerate(SPECIAL_TOKENS)}
# Reasoning tags as added plain tokens (decoded even with skip_special_tokens); their ids here are
# this fixture's own, the published ids were not established.
PLAIN_ADDED_TOKENS: tuple[str, ...] = ("<think>", "</think>")

# GLM-4's pre-tokenizer split pattern (its tiktoken tokenizer): digits in groups of up to three.
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Pieces whose merges the fixture vocabulary learns (each merged left to right), so ordinary text
# has multi-byte tokens and token boundaries that can straddle a template's newline.
_WORDS = (" the", " a", " is", " and", " of", " what", " What", " colour", " color", " square", " image",
          " video", " happens", " red", " blue", " green", " white", " bus", " are", " you", "Hello", "Fine",
          " thanks", "The", " The", " answer", " think", "think", "answer", " Describe", "Describe", " it",
          " gets", " brighter", " second", " wider", " Compare", "\n\n", "\n", " how", " second", "ing", "er")

CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{%- for m in messages -%}"
    "{%- if m.role == 'system' -%}{{ '<|system|>\\n' }}{{ m.content }}"
    "{%- elif m.role == 'user' -%}{{ '<|user|>\\n' }}"
    "{%- if m.content is string -%}{{ m.content }}"
    "{%- else -%}{%- for item in m.content -%}"
    "{%- if item.type == 'video' or 'video' in item -%}{{ '<|begin_of_video|><|video|><|end_of_video|>' }}"
    "{%- elif item.type == 'image' or 'image' in item -%}{{ '<|begin_of_image|><|image|><|end_of_image|>' }}"
    "{%- elif item.type == 'text' -%}{{ item.text }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- elif m.role == 'assistant' -%}{{ '<|assistant|>' }}{{ m.metadata if m.metadata else '' }}{{ '\\n' }}"
    "{{ m.content }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)


def _byte_level(text: str) -> str:
    """``text`` in the byte-level alphabet (GPT-2's byte-to-character map)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = bytes_to_unicode()
    return "".join(table[b] for b in text.encode("utf-8"))


def build_tokenizer() -> Any:
    """A fast tokenizer with the GLM-4 specials at their published ids (see the module docstring)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab: dict[str, int] = {ch: b for b, ch in bytes_to_unicode().items()}  # ids 0-255: the bytes
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        pieces = list(_byte_level(word))
        left = pieces[0]
        for right in pieces[1:]:
            if left + right not in vocab:
                merges.append((left, right))
                vocab[left + right] = len(vocab)
            left += right
    for i in range(len(vocab), FIRST_SPECIAL_ID):  # fillers up to the GLM-4 vocabulary size
        vocab[f"\u0100fill{i}"] = i
    backend = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in PLAIN_ADDED_TOKENS])
    for token, expected in TOKEN_IDS.items():
        if backend.token_to_id(token) != expected:
            raise RuntimeError(f"GLM test tokenizer: {token} got id {backend.token_to_id(token)}, expected {expected}")
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                  clean_up_tokenization_spaces=False, model_max_length=65536)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_processor(*, image_min_pixels: int | None = None, image_max_pixels: int | None = None,
                    video_min_pixels: int | None = None, video_max_pixels: int | None = None) -> Any:
    """A ``Glm4vProcessor`` whose saved sizes are what the formatter passes for these pixel limits
    (default: the data config's defaults), so a plain processor call encodes like the formatter."""
    from transformers import Glm4vImageProcessor, Glm4vProcessor, Glm4vVideoProcessor

    from mm_core.data.config import PreprocessParameters
    from mm_glm.formatter import pixel_size

    pre = PreprocessParameters()
    image = Glm4vImageProcessor(size=pixel_size(image_min_pixels or pre.image_min_pixels,
                                                image_max_pixels or pre.image_max_pixels, frames=2))
    # the formatter passes a video's size per call (it scales with the frame count); saved: a 2-frame clip's
    video = Glm4vVideoProcessor(size=pixel_size(video_min_pixels or pre.video_min_pixels,
                                                video_max_pixels or pre.video_max_pixels, frames=2))
    return Glm4vProcessor(image_processor=image, tokenizer=build_tokenizer(), video_processor=video,
                          chat_template=CHAT_TEMPLATE)


def save_glm_processor(hf_dir: str | os.PathLike[str], **pixel_limits: int) -> Path:
    """Write the tokenizer, chat template and processor files into ``hf_dir`` (``AutoProcessor`` loads
    it); ``pixel_limits`` as :func:`build_processor`. Written aside and moved in, never half-seen."""
    hf_dir = Path(hf_dir)
    hf_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=hf_dir, prefix=".processor-") as tmp:
        build_processor(**pixel_limits).save_pretrained(tmp)
        for f in Path(tmp).iterdir():
            os.replace(f, hf_dir / f.name) if f.is_file() else shutil.copytree(f, hf_dir / f.name, dirs_exist_ok=True)
    return hf_dir
