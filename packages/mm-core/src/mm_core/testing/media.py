"""Synthetic media written by tests and benchmarks (never downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_video(path: str | Path, frames: int, fps: int, width: int = 64, height: int = 48,
                keyframe_every: int | None = None) -> Path:
    """An mpeg4 clip whose frames differ (red level and a green bar move with the frame index), so a
    decoder that returns the wrong frame is caught; ``keyframe_every`` frames as a GOP when given."""
    import av

    path = Path(path)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        if keyframe_every:
            s.gop_size = keyframe_every
        for i in range(frames):
            img = np.zeros((height, width, 3), np.uint8)
            img[..., 0] = (i * 12) % 256
            img[:, : (i * 3) % width, 1] = 200
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def write_images(folder: str | Path, sizes: dict[str, tuple[int, int]], seed: int = 0) -> Path:
    """Random-noise images ``{file name: (height, width)}`` in ``folder`` (format from the suffix), so
    resizing or patch order mistakes change the pixels a test compares."""
    from PIL import Image

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return folder
