"""GLM-4.1V data formatter: one mllm record -> input_ids, labels, pixel tensors and grids.

The text is the GLM-4.1V template (:mod:`mm_glm.template`) with images and videos expanded as
``Glm4vProcessor`` expands them; pixels come from the processor of ``model_name_or_path`` (its own
resize and normalisation). So the ids equal ``processor.apply_chat_template`` + ``processor(...)``
for the same conversation, plus the ``<|endoftext|>`` that ends a training sample. The batch keys
are Qwen2.5-VL's (``pixel_values``/``image_grid_thw``, ``pixel_values_videos``/``video_grid_thw``):
GLM-4.1V's ViT reads the same patch sequence.

Pixel limits keep the data config's meaning, pixels per image and per video frame
(``image_max_pixels``, ``video_max_pixels``, ...): GLM's resize compares its ``size`` with
frames x height x width, so the formatter passes the limit times the frame count (2 for an image,
whose frame is repeated to fill the temporal patch).

Video frames are sampled by :func:`mm_core.data.media.load_video` (the reference's rule); each
group of two frames is written with the time of its first frame (:mod:`mm_core.data.video_times`).
Thinking replies (``<think>...</think><answer>...</answer>``) train on the whole reply unless
``basic_parameters.train_on_thinking`` is false, which leaves the thinking out of the loss.
"""

from __future__ import annotations

from typing import Any

import torch

from mm_core.data.bad_records import BadRecord
from mm_core.data.hf_processor import processor_fingerprint
from mm_core.data.label_spans import tokenize_with_labels
from mm_core.data.media import image_size, load_image, load_video
from mm_core.data.processor_formatter import ProcessorFormatter
from mm_core.data.records import Sample
from mm_core.data.video_times import probe_video, video_seconds
from mm_glm.template import END_OF_TEXT, IMAGE_TOKEN, VIDEO_TOKEN, image_text, render, video_text

FORMATTER_VERSION = "glm4v-2"  # 2: observation turns are read (cached indexes had them bad)


def pixel_size(min_pixels: int, max_pixels: int, frames: int) -> dict[str, int]:
    """GLM processor ``size`` for limits per frame of a ``frames``-frame input (an image counts 2)."""
    return {"shortest_edge": min_pixels * frames, "longest_edge": max_pixels * frames}


class Glm4vFormatter(ProcessorFormatter):
    """Turns a :class:`~mm_core.data.records.Sample` into GLM-4.1V model inputs."""

    template = "glm4v"
    extra_roles = ("observation",)  # tool results: <|observation|>\n{result} (mm_core.data.records)
    model_dir_holds = "tokenizer.json and the processor files (the GLM-4.1V HF model directory)"

    @property
    def image_token_id(self) -> int:
        """``<|image|>``: the token of image patches and of video frames alike."""
        return int(self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))

    @property
    def video_token_id(self) -> int:
        """``<|video|>``: the chat template's video placeholder; never left in encoded ids."""
        return int(self.tokenizer.convert_tokens_to_ids(VIDEO_TOKEN))

    @property
    def end_of_sample_ids(self) -> list[int]:
        """``<|endoftext|>``: what a training sample ends with beyond the chat template's text."""
        return [int(self.tokenizer.convert_tokens_to_ids(END_OF_TEXT))]

    def fingerprint(self) -> str:
        """Changes whenever tokenizer, processor, template or settings change (cache key part)."""
        basic = self.config.basic_parameters
        settings = {"pre": vars(self.config.preprocess_parameters) | {"model_name_or_path": ""},
                    "train_on_prompt": basic.train_on_prompt, "mask_history": basic.mask_history,
                    "train_on_thinking": basic.train_on_thinking}
        return processor_fingerprint(FORMATTER_VERSION, self.config.preprocess_parameters.model_name_or_path,
                                     settings)

    # -- media -------------------------------------------------------------------------------

    def _images(self, sample: Sample, pixels: bool) -> tuple[list[str], dict[str, torch.Tensor]]:
        """Each image's text and (with ``pixels``) the processor's tensors."""
        if not sample.images:
            return [], {}
        pre = self.config.preprocess_parameters
        ip = self.processor.image_processor
        size = pixel_size(pre.image_min_pixels, pre.image_max_pixels, ip.temporal_patch_size)
        if not pixels:  # token counts from the headers only
            counts = [ip.get_number_of_image_patches(*image_size(p, sample.where), {"size": size}) // ip.merge_size**2
                      for p in sample.images]
            return [image_text(n) for n in counts], {}
        images = [load_image(p, sample.where) for p in sample.images]
        res = _call(ip, sample.where, images=images, size=size, return_tensors="pt")
        counts = (res["image_grid_thw"].prod(-1) // ip.merge_size**2).tolist()
        return [image_text(n) for n in counts], {"pixel_values": res["pixel_values"],
                                                 "image_grid_thw": res["image_grid_thw"].long()}

    def _videos(self, sample: Sample, pixels: bool) -> tuple[list[str], dict[str, torch.Tensor]]:
        """Each video's text (frame groups with their seconds) and (with ``pixels``) its tensors."""
        if not sample.videos:
            return [], {}
        pre = self.config.preprocess_parameters
        vp = self.processor.video_processor
        texts, values, grids = [], [], []
        for path in sample.videos:
            if not pixels:
                probe = probe_video(path, pre.video_fps, pre.video_maxlen, sample.where)
                size = pixel_size(pre.video_min_pixels, pre.video_max_pixels, probe.frames)
                groups = -(-probe.frames // vp.temporal_patch_size)
                patches = vp.get_num_of_video_patches(probe.frames, probe.height, probe.width, {"size": size})
                texts.append(video_text(patches // vp.merge_size**2 // groups, probe.seconds[::vp.temporal_patch_size]))
                continue
            video = load_video(path, pre.video_fps, pre.video_maxlen, sample.where)
            size = pixel_size(pre.video_min_pixels, pre.video_max_pixels, len(video.frames))
            res = _call(vp, sample.where, videos=[video.frames], size=size, do_sample_frames=False,
                        return_tensors="pt")
            t, h, w = res["video_grid_thw"][0].tolist()
            seconds = video_seconds(video, pre.video_fps, pre.video_maxlen)[::vp.temporal_patch_size][:t]
            texts.append(video_text(h * w // vp.merge_size**2, seconds))
            values.append(res["pixel_values_videos"])
            grids.append(res["video_grid_thw"].long())
        if not pixels:
            return texts, {}
        return texts, {"pixel_values_videos": torch.cat(values), "video_grid_thw": torch.cat(grids)}

    # -- public ------------------------------------------------------------------------------

    def encode(self, sample: Sample, *, pixels: bool = True) -> dict[str, Any]:
        """``input_ids``/``labels`` (lists of int) and, with ``pixels``, the processor's tensors.

        ``pixels=False`` counts vision tokens from image headers and video containers only (the
        length pre-pass). Raises :class:`BadRecord` for unreadable media or an unknown role.
        """
        basic = self.config.basic_parameters
        image_texts, image_tensors = self._images(sample, pixels)
        video_texts, video_tensors = self._videos(sample, pixels)
        rendered = render(sample.messages, sample.system, image_texts, video_texts,
                          train_on_prompt=basic.train_on_prompt, mask_history=basic.mask_history,
                          train_on_thinking=basic.train_on_thinking, where=sample.where)
        ids, labels = tokenize_with_labels(self.tokenizer, rendered.text, rendered.label_spans,
                                           never_label={self.image_token_id})
        return {"input_ids": ids, "labels": labels, **image_tensors, **video_tensors}

    def dummy_vision(self) -> dict[str, torch.Tensor]:
        """One 2x2-patch black image (one merged token): what a text-only micro-batch feeds the ViT."""
        ip = self.processor.image_processor
        dim = 3 * ip.temporal_patch_size * ip.patch_size**2
        m = ip.merge_size
        return {"pixel_values": torch.zeros(m * m, dim), "image_grid_thw": torch.tensor([[1, m, m]], dtype=torch.long)}


def _call(processor: Any, where: str, **kwargs: Any) -> Any:
    """An image/video processor call whose refusal (an extreme aspect ratio, ...) is a bad record."""
    try:
        return processor(**kwargs)
    except ValueError as e:
        raise BadRecord("unreadable_media", where, f"the GLM processor refused the media: {e}") from None
