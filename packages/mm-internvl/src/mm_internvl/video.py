"""Video frames for InternVL: spread over the whole clip, one tile each, never padded.

The frame count and positions are the data pipeline's (``mm_core.data.media.sample_indices``:
``min(total, video_maxlen, floor(duration * video_fps))`` frames spread evenly from the first frame
to the last), decoded by seeking (``mm_core.data.video_decode``: decord, else PyAV). Unlike
Qwen2.5-VL, InternVL has no temporal patch, so an odd count is not padded with a repeated frame.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from mm_core.data.bad_records import BadRecord
from mm_core.data.media import sample_indices
from mm_core.data.video_decode import open_video


def _backend() -> str:
    return "decord" if importlib.util.find_spec("decord") is not None else "pyav"


def _open(path: str, where: str, backend: str) -> Any:
    try:
        return open_video(path, backend)
    except Exception as e:  # decoders raise many types for broken or missing files
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        raise BadRecord("unreadable_media", where, f"cannot decode video '{path}' ({backend}): {reason}") from None


def _indices(reader: Any, video_fps: float, video_maxlen: int) -> Any:
    return sample_indices(reader.total_frames, reader.total_frames / reader.fps, video_fps, video_maxlen)


def frame_count(path: str, video_fps: float, video_maxlen: int, where: str = "?") -> int:
    """How many frames :func:`load_frames` gives, read from the container without decoding them."""
    backend = _backend()
    reader = _open(path, where, backend)
    try:
        return len(_indices(reader, video_fps, video_maxlen))
    finally:
        reader.close()


def load_frames(path: str, video_fps: float, video_maxlen: int, where: str = "?",
                backend: str | None = None) -> Any:
    """The sampled frames ``[T, H, W, 3]`` uint8; ``backend`` ``"decord"``/``"pyav"`` forces one (tests)."""
    backend = backend or _backend()
    reader = _open(path, where, backend)
    try:
        return reader.frames(_indices(reader, video_fps, video_maxlen).tolist())
    except Exception as e:
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        raise BadRecord("unreadable_media", where, f"cannot decode video '{path}' ({backend}): {reason}") from None
    finally:
        reader.close()
