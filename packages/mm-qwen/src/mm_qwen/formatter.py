"""Qwen2.5-VL data formatter: one mllm record -> input_ids, labels, pixel tensors and grids.

The text follows the Qwen2.5-VL chat template; each ``<image>``/``<video>`` becomes
``<|vision_start|>`` + ``<|image_pad|>`` x (t*h*w / merge_size^2) + ``<|vision_end|>``. Pixels come
from the HF processor loaded from ``model_name_or_path`` (its own resizing and normalisation),
so token ids equal ``processor.apply_chat_template`` + ``processor(...)`` for the same
conversation. Labels are taken by character span: the whole text is tokenised once (exactly as
the processor does) and a token is a label when it starts inside an assistant reply
(``reply<|im_end|>\\n``), so no token boundary can differ from the processor's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from mm_core.data.hf_processor import processor_fingerprint
from mm_core.data.label_spans import tokenize_with_labels
from mm_core.data.media import image_size, load_image, load_video, video_shape
from mm_core.data.placeholders import expand_placeholders
from mm_core.data.processor_formatter import ProcessorFormatter
from mm_core.data.records import Sample

DEFAULT_SYSTEM = "You are a helpful assistant."
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
FORMATTER_VERSION = "qwen2vl-1"


class Qwen2VLFormatter(ProcessorFormatter):
    """Turns a :class:`~mm_core.data.records.Sample` into Qwen2.5-VL model inputs."""

    template = "qwen2vl"

    @property
    def image_token_id(self) -> int:
        return int(self.tokenizer.convert_tokens_to_ids("<|image_pad|>"))

    @property
    def video_token_id(self) -> int:
        return int(self.tokenizer.convert_tokens_to_ids("<|video_pad|>"))

    def fingerprint(self) -> str:
        """Changes whenever tokenizer, processor, template or settings change (cache key part)."""
        settings = {"pre": vars(self.config.preprocess_parameters) | {"model_name_or_path": ""},
                    "train_on_prompt": self.config.basic_parameters.train_on_prompt,
                    "mask_history": self.config.basic_parameters.mask_history}
        return processor_fingerprint(FORMATTER_VERSION, self.config.preprocess_parameters.model_name_or_path,
                                     settings)

    # -- text --------------------------------------------------------------------------------

    def _text_and_label_spans(self, sample: Sample, images: Iterator[str],
                              videos: Iterator[str]) -> tuple[str, list[tuple[int, int]]]:
        """The conversation text (vision placeholders expanded) and the spans of its labels."""
        basic = self.config.basic_parameters
        parts: list[tuple[str, bool]] = [
            (f"<|im_start|>system\n{sample.system if sample.system is not None else DEFAULT_SYSTEM}<|im_end|>\n", False)
        ]
        last_assistant = max(i for i, m in enumerate(sample.messages) if m["role"] == "assistant")
        for i, m in enumerate(sample.messages):
            content = expand_placeholders(m["content"], images, videos, sample.where)
            if m["role"] == "user":
                parts.append((f"<|im_start|>user\n{content}<|im_end|>\n", False))
            else:
                trained = not basic.mask_history or i == last_assistant
                parts.append(("<|im_start|>assistant\n", False))
                parts.append((f"{content}<|im_end|>\n", trained))
        text, spans, pos = "", [], 0
        for piece, is_label in parts:
            if is_label or basic.train_on_prompt:
                spans.append((pos, pos + len(piece)))
            text += piece
            pos += len(piece)
        return text, spans

    # -- media -------------------------------------------------------------------------------

    def _image_kwargs(self) -> dict[str, Any]:
        pre = self.config.preprocess_parameters
        return {"size": {"shortest_edge": pre.image_min_pixels, "longest_edge": pre.image_max_pixels}}

    def _video_kwargs(self) -> dict[str, Any]:
        pre = self.config.preprocess_parameters
        return {"size": {"shortest_edge": pre.video_min_pixels, "longest_edge": pre.video_max_pixels},
                "do_sample_frames": False, "cap_pixels_per_frame": False}

    def _vision(self, sample: Sample, pixels: bool) -> dict[str, Any]:
        pre = self.config.preprocess_parameters
        out: dict[str, Any] = {}
        ip, vp = self.processor.image_processor, self.processor.video_processor
        if sample.images:
            if pixels:
                images = [load_image(p, sample.where) for p in sample.images]
                res = ip(images=images, return_tensors="pt", **self._image_kwargs())
                out["pixel_values"] = res["pixel_values"]
                out["image_grid_thw"] = res["image_grid_thw"].long()
                out["image_tokens"] = (res["image_grid_thw"].prod(-1) // ip.merge_size**2).tolist()
            else:
                kw = {"min_pixels": pre.image_min_pixels, "max_pixels": pre.image_max_pixels}
                out["image_tokens"] = [ip.get_number_of_image_patches(*image_size(p, sample.where), kw) // ip.merge_size**2
                                       for p in sample.images]
        if sample.videos and pixels:
            videos = [load_video(p, pre.video_fps, pre.video_maxlen, sample.where) for p in sample.videos]
            res = vp(videos=[v.frames for v in videos], return_tensors="pt", **self._video_kwargs())
            out["pixel_values_videos"] = res["pixel_values_videos"]
            out["video_grid_thw"] = res["video_grid_thw"].long()
            out["second_per_grid_ts"] = torch.tensor([vp.temporal_patch_size / v.sample_fps for v in videos],
                                                     dtype=torch.float32)
            out["video_tokens"] = (res["video_grid_thw"].prod(-1) // vp.merge_size**2).tolist()
        elif sample.videos:
            kw = {"size": self._video_kwargs()["size"]}
            out["video_tokens"] = [
                vp.get_num_of_video_patches(*video_shape(p, pre.video_fps, pre.video_maxlen, sample.where), kw)
                // vp.merge_size**2 for p in sample.videos]
        return out

    # -- public ------------------------------------------------------------------------------

    def encode(self, sample: Sample, *, pixels: bool = True) -> dict[str, Any]:
        """``input_ids``/``labels`` (lists of int) and, with ``pixels``, the processor's tensors.

        ``pixels=False`` counts vision tokens from image headers only (the length pre-pass).
        Raises :class:`BadRecord` for unreadable media.
        """
        vision = self._vision(sample, pixels)
        images = iter([f"{VISION_START}{'<|image_pad|>' * n}{VISION_END}" for n in vision.pop("image_tokens", [])])
        videos = iter([f"{VISION_START}{'<|video_pad|>' * n}{VISION_END}" for n in vision.pop("video_tokens", [])])
        text, spans = self._text_and_label_spans(sample, images, videos)
        ids, labels = tokenize_with_labels(self.tokenizer, text, spans,
                                           never_label={self.image_token_id, self.video_token_id})
        return {"input_ids": ids, "labels": labels, **vision}

    def dummy_vision(self) -> dict[str, torch.Tensor]:
        """One 2x2-patch black image (one merged token): what a text-only micro-batch feeds the ViT."""
        ip = self.processor.image_processor
        dim = 3 * ip.temporal_patch_size * ip.patch_size**2
        m = ip.merge_size
        return {"pixel_values": torch.zeros(m * m, dim), "image_grid_thw": torch.tensor([[1, m, m]], dtype=torch.long)}
