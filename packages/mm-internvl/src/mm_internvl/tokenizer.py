"""An offline InternVL3 tokenizer and ``InternVLProcessor``, built from the real Qwen BPE ranks.

Tests (and anyone without Hub access) need a processor directory that ``AutoProcessor`` loads:
the Qwen2.5 vocabulary (``mm_core.testing.qwen_vocab``) with InternVL3's added tokens at their
published ids (``<img>`` 151665, ``</img>`` 151666, ``<IMG_CONTEXT>`` 151667, ...), the
``internvl2_5`` chat template with InternVL's default system prompt, transformers' GotOcr2 image
processor (dynamic tiling) and InternVL video processor, sized for the model's tiles.

The template writes an image item as ``<IMG_CONTEXT>`` and a video item as ``<video>`` with no
newline of their own (the processor expands them), so the text around a ``<image>`` placeholder of
a record is kept exactly; the Hub's ``-hf`` templates add ``\\n`` after each item instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mm_internvl.template import DEFAULT_SYSTEM

QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
QWEN_PLAIN = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
              "<|repo_name|>", "<|file_sep|>")
INTERNVL_SPECIAL = ("<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>",
                    "<video>")
ADDED: tuple[tuple[str, bool], ...] = (tuple((t, True) for t in QWEN_SPECIAL) + tuple((t, False) for t in QWEN_PLAIN)
                                       + tuple((t, True) for t in INTERNVL_SPECIAL))
TOKEN_IDS = {tok: 151643 + i for i, (tok, _) in enumerate(ADDED)}
VOCAB_SIZE = 151674  # InternVL3's embedding rows: every token above but <video>, which the processor expands
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# internvl2_5: a default system turn, then <|im_start|>role\n...<|im_end|>\n per turn
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<IMG_CONTEXT>' }}"
    "{%- elif item['type'] == 'video' -%}{{ '<video>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def build_tokenizer() -> Any:
    """A ``Qwen2Tokenizer`` with InternVL3's vocabulary, special tokens and the processor's token names."""
    from transformers import Qwen2Tokenizer

    from mm_core.testing.qwen_vocab import qwen_tokenizer_file

    tok = Qwen2Tokenizer(tokenizer_file=str(qwen_tokenizer_file(ADDED, name="internvl3_tokenizer")),
                         eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None, model_max_length=16384,
                         errors="replace", add_prefix_space=False, clean_up_tokenization_spaces=False,
                         split_special_tokens=False,
                         extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                                               "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_processor(*, tile_size: int = 448, image_seq_length: int = 256, max_patches: int = 12) -> Any:
    """``InternVLProcessor``: tokenizer, GotOcr2 tiling image processor, InternVL video processor."""
    from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

    size = {"height": tile_size, "width": tile_size}
    common = {"size": size, "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD}
    image = GotOcr2ImageProcessor(crop_to_patches=True, min_patches=1, max_patches=max_patches, **common)
    video = InternVLVideoProcessor(**common)
    return InternVLProcessor(image_processor=image, tokenizer=build_tokenizer(), video_processor=video,
                             image_seq_length=image_seq_length, chat_template=CHAT_TEMPLATE)


def save_offline_processor(hf_dir: str | os.PathLike[str], **kwargs: int) -> Path:
    """Write the tokenizer, chat template and processor files into ``hf_dir`` (``AutoProcessor`` loads
    it); ``kwargs``: :func:`build_processor`'s. Written to a temporary folder first, then moved in."""
    hf_dir = Path(hf_dir)
    hf_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=hf_dir, prefix=".processor-") as tmp:
        build_processor(**kwargs).save_pretrained(tmp)
        for f in Path(tmp).iterdir():
            os.replace(f, hf_dir / f.name) if f.is_file() else shutil.copytree(f, hf_dir / f.name, dirs_exist_ok=True)
    return hf_dir
