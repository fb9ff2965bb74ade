"""When each sampled video frame was shown, for templates that write the time into the prompt.

The frames are the ones :func:`mm_core.data.media.load_video` samples (the same indices, the
last one repeated when the count is odd), so the seconds match the pixels. :func:`probe_video`
reads only the container, for the length pre-pass that counts tokens before any frame is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass

from mm_core.data.bad_records import BadRecord
from mm_core.data.media import Video, _decord_available, _reason, sample_indices


def sampled_seconds(total_frames: int, duration: float, video_fps: float, video_maxlen: int) -> list[float]:
    """Seconds of each frame ``load_video`` returns for a clip of ``total_frames`` over ``duration``."""
    idx = sample_indices(total_frames, duration, video_fps, video_maxlen).tolist()
    if len(idx) % 2:
        idx.append(idx[-1])
    rate = total_frames / duration
    # rounded: the rate comes back from total/duration, so an exact whole second could read 2.9999999
    return [round(i / rate, 6) for i in idx]


def video_seconds(video: Video, video_fps: float, video_maxlen: int) -> list[float]:
    """Seconds of the frames of a loaded ``video`` (sampled with the same ``video_fps``/``video_maxlen``)."""
    return sampled_seconds(video.total_frames, video.duration, video_fps, video_maxlen)


@dataclass(frozen=True)
class VideoProbe:
    """What the token count of a video needs: sampled frames (padded), frame size and their seconds."""

    frames: int
    height: int
    width: int
    seconds: list[float]


def probe_video(path: str, video_fps: float, video_maxlen: int, where: str = "?") -> VideoProbe:
    """The container's answer to :class:`VideoProbe`, without decoding the sampled frames."""
    from mm_core.data.video_decode import open_video

    backend = "decord" if _decord_available() else "pyav"
    try:
        reader = open_video(path, backend)
    except Exception as e:
        raise BadRecord("unreadable_media", where, f"cannot decode video '{path}' ({backend}): {_reason(e)}") from None
    try:
        seconds = sampled_seconds(reader.total_frames, reader.total_frames / reader.fps, video_fps, video_maxlen)
        return VideoProbe(len(seconds), reader.height, reader.width, seconds)
    finally:
        reader.close()
