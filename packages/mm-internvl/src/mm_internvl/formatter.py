"""InternVL3 data formatter (template ``internvl2_5``): one record -> input_ids, labels, tiles.

Each image is tiled dynamically (``preprocess_parameters.min_dynamic_patch`` ..
``max_dynamic_patch`` tiles chosen by aspect ratio, plus a thumbnail) and each video frame is one
tile; every tile stands for ``(image_size / patch_size)**2 * downsample_ratio**2`` ``<IMG_CONTEXT>``
tokens (256 for InternVL3's 448 px tiles of 14 px patches), read from the model's ``config.json``
(both checkpoint layouts). The text follows :mod:`mm_internvl.template`. Tokenizer and pixels come
from ``model_name_or_path``: its tokenizer, transformers' GotOcr2 image processor and InternVL
video processor (built with the directory's mean/std when it ships another image processor, as
the original remote-code repositories do), so ids and ``pixel_values`` equal ``InternVLProcessor``'s.
``pixel_values`` holds every tile in text order: an image's tiles then its thumbnail, a video's frames.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mm_core.data.config import DataConfig
from mm_core.data.hf_processor import processor_fingerprint
from mm_core.data.label_spans import tokenize_with_labels
from mm_core.data.media import image_size, load_image
from mm_core.data.processor_formatter import require_model_dir
from mm_core.data.records import Sample
from mm_core.errors import ConfigError
from mm_internvl.template import IMAGE_CONTEXT, render
from mm_internvl.tiling import num_tiles
from mm_internvl.video import frame_count, load_frames

FORMATTER_VERSION = "internvl2_5-1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def tile_geometry(model_dir: str | Path) -> tuple[int, int]:
    """``(tile size in px, <IMG_CONTEXT> tokens per tile)`` from ``config.json`` of either layout
    (the ``-hf`` one: ``vision_config.image_size``; the original: ``force_image_size``)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"preprocess_parameters.model_name_or_path: {path} does not exist; InternVL's tile size "
                          "and tokens per tile are read from the model's config.json")
    cfg = json.loads(path.read_text())
    vision = cfg.get("vision_config") or {}
    size = cfg.get("force_image_size") or vision.get("image_size")
    patch = vision.get("patch_size")
    ratio = cfg.get("downsample_ratio", 0.5)
    if size is None or patch is None:
        raise ConfigError(f"{path}: needs vision_config.image_size (or force_image_size) and vision_config.patch_size")
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    patch = int(patch[0] if isinstance(patch, (list, tuple)) else patch)
    return size, int((size // patch) ** 2 * float(ratio) ** 2)


_PARTS: dict[tuple[str, float], tuple[Any, Any, Any]] = {}


def _load_parts(path: str, tile: int) -> tuple[Any, Any, Any]:
    """Tokenizer, tiling image processor, video processor of a directory (cached per process)."""
    key = (str(Path(path).resolve()), Path(path).stat().st_mtime)
    if key not in _PARTS:
        from transformers import AutoImageProcessor, AutoTokenizer
        from transformers import GotOcr2ImageProcessor as TilingProcessor
        from transformers import InternVLVideoProcessor as VideoProcessor

        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        try:
            image = AutoImageProcessor.from_pretrained(path)
        except (OSError, ValueError):
            image = None
        if not hasattr(image, "crop_to_patches"):  # the original repositories ship a CLIP-style config
            mean = list(getattr(image, "image_mean", None) or IMAGENET_MEAN)
            std = list(getattr(image, "image_std", None) or IMAGENET_STD)
            image = TilingProcessor(size={"height": tile, "width": tile}, image_mean=mean, image_std=std)
        if (image.size.height, image.size.width) != (tile, tile):
            raise ConfigError(f"{path}: the image processor makes {image.size.height}x{image.size.width} px tiles but "
                              f"config.json's vision tower takes {tile} px; fix preprocessor_config.json 'size'")
        video = VideoProcessor(size={"height": tile, "width": tile}, image_mean=image.image_mean,
                               image_std=image.image_std, resample=image.resample)
        _PARTS[key] = (tokenizer, image, video)
    return _PARTS[key]


class InternVLFormatter:
    """Turns a :class:`~mm_core.data.records.Sample` into InternVL3 model inputs.

    Tokenizer and processors load lazily and are dropped when pickled (DataLoader workers load their own).
    """

    template = "internvl2_5"

    def __init__(self, data_config: DataConfig):
        self.config = data_config
        pre = data_config.preprocess_parameters
        require_model_dir(data_config, "config.json and the tokenizer files")
        if not 1 <= pre.min_dynamic_patch <= pre.max_dynamic_patch:
            raise ConfigError(f"preprocess_parameters: min_dynamic_patch {pre.min_dynamic_patch} and max_dynamic_patch "
                              f"{pre.max_dynamic_patch} need 1 <= min <= max")
        self.tile_size, self.tokens_per_tile = tile_geometry(pre.model_name_or_path)
        self._parts: tuple[Any, Any, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_parts": None}

    def _part(self, i: int) -> Any:
        if self._parts is None:
            self._parts = _load_parts(self.config.preprocess_parameters.model_name_or_path, self.tile_size)
        return self._parts[i]

    @property
    def tokenizer(self) -> Any:
        return self._part(0)

    @property
    def image_processor(self) -> Any:
        return self._part(1)

    @property
    def video_processor(self) -> Any:
        return self._part(2)

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def image_token_id(self) -> int:
        return int(self.tokenizer.convert_tokens_to_ids(IMAGE_CONTEXT))

    def fingerprint(self) -> str:
        """Changes whenever tokenizer, processor, tiles, template or settings change (cache key part)."""
        pre = self.config.preprocess_parameters
        settings = {"pre": vars(pre) | {"model_name_or_path": ""}, "tiles": [self.tile_size, self.tokens_per_tile],
                    "train_on_prompt": self.config.basic_parameters.train_on_prompt,
                    "mask_history": self.config.basic_parameters.mask_history}
        return processor_fingerprint(FORMATTER_VERSION, pre.model_name_or_path, settings)

    # -- media -------------------------------------------------------------------------------

    def _tiling(self) -> dict[str, Any]:
        pre = self.config.preprocess_parameters
        return {"crop_to_patches": True, "min_patches": pre.min_dynamic_patch, "max_patches": pre.max_dynamic_patch}

    def _image_tiles(self, sample: Sample, pixels: bool) -> tuple[list[int], list[torch.Tensor]]:
        pre = self.config.preprocess_parameters
        if not pixels:
            sizes = [image_size(p, sample.where) for p in sample.images]
            return [num_tiles(h, w, self.tile_size, pre.min_dynamic_patch, pre.max_dynamic_patch)
                    for h, w in sizes], []
        counts, tiles = [], []
        for path in sample.images:
            res = self.image_processor(images=[load_image(path, sample.where)], return_tensors="pt", **self._tiling())
            tiles.append(res["pixel_values"])
            counts.append(int(res["pixel_values"].shape[0]))
        return counts, tiles

    def _video_frames(self, sample: Sample, pixels: bool) -> tuple[list[int], list[torch.Tensor]]:
        pre = self.config.preprocess_parameters
        if not pixels:
            return [frame_count(p, pre.video_fps, pre.video_maxlen, sample.where) for p in sample.videos], []
        frames = []
        for path in sample.videos:
            clip = load_frames(path, pre.video_fps, pre.video_maxlen, sample.where)
            res = self.video_processor(videos=[clip], return_tensors="pt", do_sample_frames=False)
            frames.append(res["pixel_values_videos"][0])
        return [len(f) for f in frames], frames

    # -- public ------------------------------------------------------------------------------

    def encode(self, sample: Sample, *, pixels: bool = True) -> dict[str, Any]:
        """``input_ids``/``labels`` (lists of int) and, with ``pixels``, ``pixel_values`` ``[tiles, 3, S, S]``.

        ``pixels=False`` counts tiles from image headers and video containers only (the length pre-pass).
        Raises :class:`BadRecord` for unreadable media or placeholders that do not match the media.
        """
        basic = self.config.basic_parameters
        image_counts, image_tiles = self._image_tiles(sample, pixels)
        frame_counts, frame_tiles = self._video_frames(sample, pixels)
        pieces, order = render(sample, image_counts, frame_counts, self.tokens_per_tile, mask_history=basic.mask_history)
        text, spans, pos = "", [], 0
        for piece, trained in pieces:
            if trained or basic.train_on_prompt:
                spans.append((pos, pos + len(piece)))
            text, pos = text + piece, pos + len(piece)
        ids, labels = tokenize_with_labels(self.tokenizer, text, spans, never_label={self.image_token_id})
        out: dict[str, Any] = {"input_ids": ids, "labels": labels}
        if pixels and order:
            images, videos = iter(image_tiles), iter(frame_tiles)
            out["pixel_values"] = torch.cat([next(images if kind == "image" else videos) for kind in order])
        return out

    def dummy_vision(self) -> dict[str, torch.Tensor]:
        """One black tile: what a text-only micro-batch feeds the ViT (its features count zero)."""
        return {"pixel_values": torch.zeros(1, 3, self.tile_size, self.tile_size)}
