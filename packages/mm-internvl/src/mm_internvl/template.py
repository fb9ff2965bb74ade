"""InternVL's ``internvl2_5`` conversation template (InternVL2.5 and InternVL3).

``<|im_start|>system\\n{system}<|im_end|>\\n``, then ``<|im_start|>user\\n{question}<|im_end|>\\n`` and
``<|im_start|>assistant\\n{answer}<|im_end|>\\n`` per turn; the default system prompt is InternVL's own.
Each ``<image>`` of the text becomes ``<img>`` + ``<IMG_CONTEXT>`` per feature of its tiles +
``</img>``, and each ``<video>`` one ``FrameN: <img>...</img>`` line per frame (one tile each; the
spelling of transformers' ``InternVLProcessor``, InternVL's training scripts write ``Frame-N:``). Trained: ``answer<|im_end|>\\n`` of each
assistant turn (``mask_history``: the last one only; ``train_on_prompt``: everything).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mm_core.data.bad_records import BadRecord
from mm_core.data.records import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, Sample

DEFAULT_SYSTEM = ("你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的"
                  "多模态大语言模型。")
IMAGE_CONTEXT = "<IMG_CONTEXT>"
_PLACEHOLDER = re.compile(f"{re.escape(IMAGE_PLACEHOLDER)}|{re.escape(VIDEO_PLACEHOLDER)}")


def tile_span(tiles: int, tokens_per_tile: int) -> str:
    """``<img>``, the features of ``tiles`` tiles as ``<IMG_CONTEXT>`` tokens, ``</img>``."""
    return f"<img>{IMAGE_CONTEXT * (tiles * tokens_per_tile)}</img>"


def video_text(frames: int, tokens_per_tile: int) -> str:
    """One ``FrameN: <img>...</img>`` line per frame (no newline after the last)."""
    return "\n".join(f"Frame{i + 1}: {tile_span(1, tokens_per_tile)}" for i in range(frames))


def render(sample: Sample, image_tiles: Sequence[int], video_frames: Sequence[int], tokens_per_tile: int, *,
           mask_history: bool = False) -> tuple[list[tuple[str, bool]], list[str]]:
    """The conversation as ``(text, trained)`` pieces with every placeholder expanded, and the media in
    text order (``"image"``/``"video"``); ``image_tiles``: tiles per image, ``video_frames``: per video."""
    order: list[str] = []
    images, videos = iter(image_tiles), iter(video_frames)

    def media(match: re.Match[str]) -> str:
        kind = "image" if match.group(0) == IMAGE_PLACEHOLDER else "video"
        n = next(images if kind == "image" else videos, None)
        if n is None:
            raise BadRecord("placeholder_mismatch", sample.where, f"more {match.group(0)} placeholders than {kind}s")
        order.append(kind)
        return tile_span(n, tokens_per_tile) if kind == "image" else video_text(n, tokens_per_tile)

    system = sample.system if sample.system is not None else DEFAULT_SYSTEM
    pieces: list[tuple[str, bool]] = [(f"<|im_start|>system\n{system}<|im_end|>\n", False)]
    last = max(i for i, m in enumerate(sample.messages) if m["role"] == "assistant")
    for i, m in enumerate(sample.messages):
        content = _PLACEHOLDER.sub(media, m["content"])
        if m["role"] == "user":
            pieces.append((f"<|im_start|>user\n{content}<|im_end|>\n", False))
        else:
            pieces.append(("<|im_start|>assistant\n", False))
            pieces.append((f"{content}<|im_end|>\n", not mask_history or i == last))
    if len(order) != len(image_tiles) + len(video_frames):
        raise BadRecord("placeholder_mismatch", sample.where, f"{order.count('image')} <image> / "
                        f"{order.count('video')} <video> placeholders for {len(image_tiles)} image(s) and "
                        f"{len(video_frames)} video(s)")
    return pieces, order
