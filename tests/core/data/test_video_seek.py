"""Long videos are sampled by seeking: only the sampled frames (and the few between a keyframe and
each of them) are decoded, and they are the frames a full decode would pick."""

from __future__ import annotations

import numpy as np
import pytest

from mm_core.data.media import load_video, sample_indices


def _long_video(path, n: int, fps: int = 30, gop: int = 30, side: int = 32):
    """``n`` frames whose brightness encodes the frame number (keyframe every ``gop`` frames)."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt, s.gop_size = side, side, "yuv420p", gop
        for i in range(n):
            img = np.full((side, side, 3), (i * 7) % 256, np.uint8)
            img[: (i % side), :, 1] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _all_frames(path):
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])  # mkv: no frame count in the header, packets are counted
def test_pyav_seeks_to_the_sampled_frames_of_a_long_video(tmp_path, suffix):
    path = _long_video(tmp_path / f"long{suffix}", n=1800)  # one minute at 30 fps
    v = load_video(str(path), 2.0, 16, backend="pyav")
    assert v.total_frames == 1800 and v.frames.shape == (16, 32, 32, 3)
    assert v.decoded_frames < 1800 // 3, f"decoded {v.decoded_frames} of 1800 frames for 16"
    full = _all_frames(path)
    idx = sample_indices(1800, 60.0, 2.0, 16)
    assert idx[-1] == 1799  # spread over the whole clip, not its first seconds
    assert np.array_equal(v.frames, full[idx])


def test_decord_and_pyav_pick_the_same_frames_of_a_long_video(tmp_path):
    pytest.importorskip("decord")
    path = str(_long_video(tmp_path / "long.mp4", n=600))
    a, b = load_video(path, 2.0, 9, backend="decord"), load_video(path, 2.0, 9, backend="pyav")
    assert a.total_frames == b.total_frames == 600 and np.array_equal(a.frames, b.frames)


def test_infer_samples_a_video_like_training(tmp_path):
    """`mm-run infer` reads videos through the training sampler: spread to the clip's last frame."""
    from mm_core.cli.infer_inputs import load_media

    path = str(_long_video(tmp_path / "clip.mp4", n=600))
    media = load_media({"images": [], "videos": [path]}, "the command line", video_fps=2.0, max_video_frames=8)
    (frames, rate), = media.videos
    assert np.array_equal(frames, load_video(path, 2.0, 8).frames)
    assert np.array_equal(frames[-1], _all_frames(path)[-1]) and rate == pytest.approx(8 / 20.0)
