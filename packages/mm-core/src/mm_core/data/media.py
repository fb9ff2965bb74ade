"""Opening images and decoding videos: each file is opened once, errors become bad records.

Video frames follow the reference rule: ``n = min(total frames, video_maxlen, floor(duration *
video_fps))`` (at least 1) frame indices spread evenly over the clip with ``linspace``; an odd
count is padded by repeating the last frame (Qwen2.5-VL's temporal patch is 2 frames). Training
and ``mm-run infer`` both sample here. Only the sampled frames are decoded, by seeking
(``mm_core.data.video_decode``): decord when installed, PyAV otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mm_core.data.bad_records import BadRecord


@dataclass
class Video:
    """Sampled frames ``[T, H, W, 3]`` uint8 and the rate they represent."""

    frames: np.ndarray
    sample_fps: float  # sampled (unpadded) frames per second of video
    total_frames: int
    duration: float
    decoded_frames: int = 0  # frames the decoder produced (PyAV; decord: those returned)


def load_image(path: str, where: str = "?"):
    """The image as RGB ``PIL.Image``, fully decoded (a truncated file is a bad record, not a crash)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as e:  # PIL raises many types for corrupt files
        raise BadRecord("unreadable_media", where, f"cannot read image '{path}': {e}") from None


def image_size(path: str, where: str = "?") -> tuple[int, int]:
    """``(height, width)`` from the header only (cheap: used to count vision tokens before decoding)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except Exception as e:
        raise BadRecord("unreadable_media", where, f"cannot read image '{path}': {e}") from None


def sample_indices(total_frames: int, duration: float, video_fps: float, video_maxlen: int) -> np.ndarray:
    """Evenly spread frame indices: count = min(total, maxlen, floor(duration * fps)), at least 1."""
    n = max(1, min(total_frames, video_maxlen, math.floor(duration * video_fps)))
    return np.linspace(0, total_frames - 1, n).astype(np.int64)


def _pad_even(frames: np.ndarray) -> np.ndarray:
    if len(frames) % 2:
        frames = np.concatenate([frames, frames[-1:]], axis=0)
    return frames


def _decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except Exception:
        return False
    return True


def _load(path: str, video_fps: float, video_maxlen: int, backend: str) -> Video:
    from mm_core.data.video_decode import open_video

    reader = open_video(path, backend)
    try:
        duration = reader.total_frames / reader.fps
        idx = sample_indices(reader.total_frames, duration, video_fps, video_maxlen)
        frames = reader.frames(idx.tolist())
    finally:
        reader.close()
    return Video(_pad_even(frames), len(idx) / duration, reader.total_frames, duration, reader.decoded)


def video_shape(path: str, video_fps: float, video_maxlen: int, where: str = "?") -> tuple[int, int, int]:
    """``(sampled frames after padding, height, width)`` from the container, without decoding the
    sampled frames (used to count vision tokens before decoding)."""
    from mm_core.data.video_decode import open_video

    backend = "decord" if _decord_available() else "pyav"
    try:
        reader = open_video(path, backend)
    except Exception as e:
        raise BadRecord("unreadable_media", where, f"cannot decode video '{path}' ({backend}): {_reason(e)}") from None
    try:
        n = len(sample_indices(reader.total_frames, reader.total_frames / reader.fps, video_fps, video_maxlen))
        return n + n % 2, reader.height, reader.width
    finally:
        reader.close()


def load_video(path: str, video_fps: float, video_maxlen: int, where: str = "?", backend: str | None = None) -> Video:
    """Sampled frames of a video file; ``backend`` ``"decord"``/``"pyav"`` forces one (tests)."""
    backend = backend or ("decord" if _decord_available() else "pyav")
    try:
        return _load(path, video_fps, video_maxlen, backend)
    except BadRecord:
        raise
    except Exception as e:
        raise BadRecord("unreadable_media", where, f"cannot decode video '{path}' ({backend}): {_reason(e)}") from None


def _reason(e: BaseException) -> str:
    """A decoder's error as one short line (decord's carry a C++ backtrace)."""
    text = str(e).strip()
    if "cannot find video stream" in text:
        return "the file has no video stream"
    first = text.splitlines()[0] if text else type(e).__name__
    return first if len(first) <= 300 else first[:300] + "..."
