"""VisualGLM-6B's data formatter (template ``visualglm``): the original fine-tuning sequence layout.

One record -> ``<img>`` ids, ``image_length`` placeholders, ids of ``</img>问：{prompt}\\n答：`` (earlier
turns as ``问：{q}\\n答：{a}\\n`` before the last question), cut to ``max_source_length - 1`` (63) ids,
then ``[gMASK] <sop>``, the reply's ids cut to ``max_target_length - 2`` (254), then ``<eop>``. Labels
are -100 up to ``<sop>`` and the ids from ``<sop>`` on (a shifted loss makes ``[gMASK]`` predict
``<sop>``), as ``finetune_visualglm.py`` builds them. A record without an image has no ``<img></img>``.
Each image is 224x224 bicubic, CLIP mean/std (``pixel_values`` ``[1, 3, 224, 224]``). The tokenizer is
``ice_text.model`` from ``preprocess_parameters.model_name_or_path``; ids come from the model's config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mm_core.data.bad_records import BadRecord
from mm_core.data.config import DataConfig
from mm_core.data.media import load_image
from mm_core.data.records import Sample
from mm_core.errors import ConfigError

FORMATTER_VERSION = "visualglm-1"
MAX_SOURCE_LENGTH = 64
MAX_TARGET_LENGTH = 256
IMAGE_TAG = "<image>"


def prompt_text(messages: list[dict[str, str]]) -> str:
    """``问：{q}\\n答：{a}\\n`` per earlier turn, then ``问：{q}\\n答：`` (placeholders removed)."""
    turns = [m["content"].replace(IMAGE_TAG, "") for m in messages]
    text = "".join(f"问：{q}\n答：{a}\n" for q, a in zip(turns[0:-2:2], turns[1:-1:2], strict=True))
    return text + f"问：{turns[-2] if len(turns) % 2 == 0 else turns[-1]}\n答："


class VisualGLMFormatter:
    """Turns a :class:`~mm_core.data.records.Sample` into VisualGLM-6B inputs (lazy tokenizer, picklable)."""

    template = "visualglm"
    max_source_length = MAX_SOURCE_LENGTH
    max_target_length = MAX_TARGET_LENGTH

    def __init__(self, data_config: DataConfig):
        from mm_visualglm.config import parse_config

        pre = data_config.preprocess_parameters
        d = Path(pre.model_name_or_path) if pre.model_name_or_path else None
        if d is None or not d.is_dir():
            raise ConfigError(f"preprocess_parameters.model_name_or_path '{pre.model_name_or_path}': give the VisualGLM "
                              "model directory (config.json or model_config.json, and ice_text.model)")
        self.dir = d
        self.model = parse_config(d)
        self._tokenizer: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokenizer": None}

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from mm_visualglm.tokenizer import FILE, ChatGLMTokenizer, find_tokenizer_file

            file = find_tokenizer_file(self.dir)
            if file is None:
                raise ConfigError(f"{self.dir}: no {FILE}; copy ChatGLM-6B's tokenizer file into the model directory")
            self._tokenizer = ChatGLMTokenizer(file)
            tok, cfg = self._tokenizer, self.model
            if (tok.gmask_token_id, tok.bos_token_id, tok.eos_token_id) != (cfg.gmask_token_id, cfg.bos_token_id,
                                                                              cfg.eos_token_id):
                raise ConfigError(f"{file}: [gMASK]/<sop>/<eop> are {tok.gmask_token_id}/{tok.bos_token_id}/"
                                  f"{tok.eos_token_id} but the model config says {cfg.gmask_token_id}/"
                                  f"{cfg.bos_token_id}/{cfg.eos_token_id}")
        return self._tokenizer

    @property
    def pad_token_id(self) -> int:
        return self.model.pad_token_id

    def fingerprint(self) -> str:
        return (f"{FORMATTER_VERSION}:{self.tokenizer.fingerprint()}:{self.max_source_length}:"
                f"{self.max_target_length}:{self.model.image_length}:{self.model.image_token_id}")

    def prompt_ids(self, messages: list[dict[str, str]], images: int) -> tuple[list[int], int]:
        """The prompt before ``[gMASK] <sop>`` (image block(s), then the question text, uncut) and
        where its last placeholder ends."""
        tok = self.tokenizer
        ids: list[int] = []
        for i in range(images):
            ids += tok.encode("<img>") + [self.model.image_token_id] * self.model.image_length
            end = len(ids)
            if i < images - 1:
                ids += tok.encode("</img>")
        text = prompt_text(messages)
        return ids + tok.encode(("</img>" if images else "") + text), (end if images else 0)

    def encode(self, sample: Sample, *, pixels: bool = True) -> dict[str, Any]:
        msgs = sample.messages
        if len(msgs) < 2 or msgs[-1]["role"] != "assistant":
            raise BadRecord("no_assistant", sample.where, "the last turn must be the reply to learn")
        tok = self.tokenizer
        a, end = self.prompt_ids(msgs[:-1], len(sample.images))
        b = tok.encode(msgs[-1]["content"].replace(IMAGE_TAG, ""))
        a, b = a[: self.max_source_length - 1], b[: self.max_target_length - 2]
        if len(a) < end:
            raise BadRecord("too_long", sample.where, f"max_source_length {self.max_source_length} cuts the image "
                            "placeholders; the prompt must keep every image whole")
        ids = tok.build_inputs(a, b)
        c = ids.index(tok.bos_token_id)
        labels = [-100] * c + [t if t != self.pad_token_id else -100 for t in ids[c:]]
        out: dict[str, Any] = {"input_ids": ids, "labels": labels}
        if pixels and sample.images:
            out["pixel_values"] = self.pixels(sample.images, sample.where)
        return out

    def pixels(self, paths: list[str], where: str = "?") -> torch.Tensor:
        from mm_visualglm.vision import preprocess_image

        size = self.model.vision.image_size
        return torch.stack([preprocess_image(load_image(p, where), size) for p in paths])

    def dummy_vision(self) -> dict[str, torch.Tensor]:
        size = self.model.vision.image_size
        return {"pixel_values": torch.zeros(1, 3, size, size)}
