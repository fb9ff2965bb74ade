"""VisualGLM-6B's inference prompt as an HF-processor-like object (no remote code).

``apply_chat_template`` writes VisualGLM's chat prompt: ``<img></img>`` when the turn has an image,
earlier turns as ``问：{q}\\n答：{a}\\n``, then ``问：{prompt}\\n答：`` (model/chat.py ``chat``); calling
the processor tokenizes it as the model reads it (``<img>`` ids, ``image_length`` placeholders, ids of
``</img>问：...\\n答：``, then ``[gMASK] <sop>``), left-pads a batch with ``<pad>`` and makes the
224x224 CLIP-normalised ``pixel_values``. ``tokenizer`` answers what generation and decoding ask of
an HF tokenizer (eos, special ids, ``decode``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mm_visualglm.formatter import prompt_text

IMAGE_BLOCK = "<img></img>"


class TokenizerView:
    """The HF tokenizer members `mm-run infer` uses, over :class:`~mm_visualglm.tokenizer.ChatGLMTokenizer`."""

    padding_side = "left"

    def __init__(self, tok: Any):
        self.tok = tok
        self.eos_token_id = tok.eos_token_id
        self.pad_token_id = tok.pad_token_id
        self.all_special_ids = [tok.mask_token_id, tok.gmask_token_id, tok.bos_token_id, tok.eos_token_id,
                                tok.pad_token_id]

    def convert_tokens_to_ids(self, piece: str) -> int:
        return self.tok.sp.piece_to_id(piece)

    def convert_ids_to_tokens(self, i: int) -> str:
        return self.tok.sp.id_to_piece(i)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode(list(ids))


class VisualGLMProcessor:
    def __init__(self, model_dir: str | Path):
        from mm_core.data.config import DataConfig
        from mm_visualglm.formatter import VisualGLMFormatter

        cfg = DataConfig()
        cfg.preprocess_parameters.model_name_or_path = str(model_dir)
        self.formatter = VisualGLMFormatter(cfg)
        self.tokenizer = TokenizerView(self.formatter.tokenizer)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, **_: Any) -> VisualGLMProcessor:
        return cls(model_dir)

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            tokenize: bool = False) -> str:
        """VisualGLM's prompt text (content lists of ``{"type": "image"|"text"}`` or plain strings)."""
        turns, image = [], False
        for m in messages:
            if m["role"] == "system":
                continue
            content = m["content"]
            if isinstance(content, list):
                image |= any(c.get("type") == "image" for c in content)
                content = "".join(c.get("text", "") for c in content if c.get("type") == "text")
            turns.append({"role": m["role"], "content": content})
        return (IMAGE_BLOCK if image else "") + prompt_text(turns)

    def encode_prompt(self, text: str, images: int) -> list[int]:
        """Ids of one prompt text (``<img></img>`` opens it when ``images``) and ``[gMASK] <sop>``."""
        f = self.formatter
        tok = f.tokenizer
        if images:
            if not text.startswith(IMAGE_BLOCK):
                raise ValueError(f"a prompt with an image must start with {IMAGE_BLOCK}")
            ids = tok.encode("<img>") + [f.model.image_token_id] * f.model.image_length + \
                tok.encode("</img>" + text[len(IMAGE_BLOCK):])
        else:
            ids = tok.encode(text)
        return tok.build_inputs(ids)

    def __call__(self, text: list[str], images: list[Any] | None = None, padding: bool = True,
                 return_tensors: str = "pt", **_: Any) -> dict[str, torch.Tensor]:
        images = list(images or [])
        with_image = [t.startswith(IMAGE_BLOCK) for t in text]
        if sum(with_image) != len(images):
            raise ValueError(f"{len(images)} image(s) for {sum(with_image)} prompt(s) with {IMAGE_BLOCK}: "
                             "VisualGLM takes one image per prompt")
        rows = [self.encode_prompt(t, int(w)) for t, w in zip(text, with_image, strict=True)]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        out = {"input_ids": ids, "attention_mask": mask}
        if images:
            from mm_visualglm.vision import preprocess_image

            size = self.formatter.model.vision.image_size
            out["pixel_values"] = torch.stack([preprocess_image(im, size) for im in images])
        return out
