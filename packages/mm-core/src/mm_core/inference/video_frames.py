"""The video frames `mm-run infer` hands the family's processor.

Frames are sampled as in training (:func:`mm_core.data.media.load_video`: the same decoder and
evenly spread indices), but not padded here: ``load_video`` repeats the last frame to an even
count, which is Qwen2.5-VL's and GLM-4.1V's temporal patch of 2 frames, not every family's rule.
Each family's processor pads to its own temporal patch (``temporal_patch_size``; InternVL3 takes
frames as they are, one tile each), so infer's video input is what that processor makes of the
sampled clip, and the metadata (rate, seconds) describes the frames that were really sampled.
"""

from __future__ import annotations

from typing import Any


def sampled_video(path: str, where: str, video_fps: float, max_frames: int) -> tuple[Any, float, list[float]]:
    """``(frames [n, H, W, 3], rate, seconds)``: the ``n`` sampled frames, the rate they stand for and
    the second each was shown at, without the even padding of the training loader."""
    from mm_core.data.media import load_video, sample_indices
    from mm_core.data.video_times import video_seconds

    video = load_video(path, video_fps, max_frames, where)
    n = len(sample_indices(video.total_frames, video.duration, video_fps, max_frames))
    return video.frames[:n], video.sample_fps, video_seconds(video, video_fps, max_frames)[:n]
