"""Chosen frames of a video file, decoded by seeking: memory and time follow the frames asked for,
not the video's length (a ten-minute clip sampled to 64 frames never holds more than those 64).

Two readers with one interface (``total_frames``, ``fps``, ``height``, ``width``, ``frames(idx)``,
``decoded``): decord's index-based reader, and PyAV, which seeks to the keyframe before a far
target and decodes forward to it (near targets are reached by decoding on, which is cheaper than
seeking back to the same keyframe). Frame ``i`` is the one shown at ``i / fps`` seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class DecordVideo:
    """decord's reader: its index knows every frame's position, so it seeks on its own."""

    def __init__(self, path: str):
        import decord

        self._vr = decord.VideoReader(path, num_threads=1)
        self.total_frames = len(self._vr)
        if self.total_frames == 0:
            raise ValueError("the video stream has no frames")
        self.fps = float(self._vr.get_avg_fps()) or 1.0
        self.height, self.width = (int(n) for n in self._vr[0].shape[:2])
        self.decoded = 0  # frames handed out (decord does not say how many it decoded on the way)

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        self.decoded += len(indices)
        return self._vr.get_batch(list(indices)).asnumpy()

    def close(self) -> None:
        self._vr = None


class PyAVVideo:
    """PyAV: the frame count from the container (or by counting packets, never by decoding)."""

    def __init__(self, path: str):
        import av

        self._container = av.open(path)
        if not self._container.streams.video:
            self._container.close()
            raise ValueError("the file has no video stream")
        self._stream = s = self._container.streams.video[0]
        self.fps = float(s.average_rate or 0) or 1.0
        self.total_frames = int(s.frames or 0) or self._count_packets()
        if self.total_frames == 0:
            self._container.close()
            raise ValueError("the video stream has no frames")
        self.height, self.width = int(s.codec_context.height), int(s.codec_context.width)
        self._start = s.start_time or 0  # pts of frame 0
        self.decoded = 0  # frames the decoder produced: what seeking saves shows here
        self._decoder: Any = None
        self._pos = -1  # index of the last frame decoded

    def _count_packets(self) -> int:
        n = sum(1 for p in self._container.demux(self._stream) if p.size)
        self._container.seek(0, stream=self._stream)
        return n

    def _index(self, frame: Any) -> int:
        if frame.pts is None:
            return self._pos + 1
        return round(float((frame.pts - self._start) * self._stream.time_base) * self.fps)

    def _seek(self, target: int) -> None:
        pts = self._start + int(target / self.fps / self._stream.time_base)
        self._container.seek(pts, stream=self._stream, backward=True, any_frame=False)
        self._decoder, self._pos = self._container.decode(self._stream), -1

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        out = []
        near = max(16, int(2 * self.fps))  # closer targets: decode on rather than seek back
        for target in indices:
            if self._decoder is None or target <= self._pos or target - self._pos > near:
                self._seek(target)
            for frame in self._decoder:
                self.decoded += 1
                self._pos = self._index(frame)
                if self._pos >= target:
                    out.append(frame.to_ndarray(format="rgb24"))
                    break
            else:
                raise ValueError(f"frame {target} of {self.total_frames} could not be decoded")
        return np.stack(out)

    def close(self) -> None:
        self._container.close()


def open_video(path: str, backend: str) -> DecordVideo | PyAVVideo:
    """A reader of ``path`` with ``backend`` ``"decord"`` or ``"pyav"``."""
    return DecordVideo(path) if backend == "decord" else PyAVVideo(path)
