"""Peak memory of sampling a long video: flat in the video's length (frames are decoded by seeking).

    .venv/bin/python bench/long_video.py             # 1, 3 and 10 minutes at 30 fps, 160x120
    .venv/bin/python bench/long_video.py --quick     # 10 s and 60 s

Each measurement runs ``mm_core.data.media.load_video`` (64 frames at 2 fps, as in training) in a
fresh process and reports its peak RSS and what sampling added to the RSS after the imports, the
frames decoded and the wall time, for decord and PyAV.
The baseline decodes every frame and then samples (what PyAV and `mm-run infer` did before), in a
fresh process too; it is only run up to 3 minutes. Used by bench/data.py; runs on its own as well.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = r"""
import json, resource, sys, time
import av
import numpy as np
from mm_core.data.media import load_video, sample_indices
path, backend = sys.argv[1], sys.argv[2]
if backend == "decord":
    import decord
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # after the imports: what sampling adds
t = time.perf_counter()
if backend == "decode_all":
    with av.open(path) as c:
        s = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        rate = float(s.average_rate)
    idx = sample_indices(len(frames), len(frames) / rate, 2.0, 64)
    out, decoded = np.stack([frames[i] for i in idx]), len(frames)
else:
    v = load_video(path, 2.0, 64, backend=backend)
    out, decoded = v.frames, v.decoded_frames
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_rss_mb": round(peak / 1024, 1), "added_rss_mb": round((peak - base) / 1024, 1),
                  "decoded_frames": decoded, "sampled": int(out.shape[0]), "s": round(time.perf_counter() - t, 2)}))
"""


def make_video(path: Path, seconds: int, fps: int = 30, side: tuple[int, int] = (160, 120)) -> Path:
    """A synthetic clip (a keyframe every 2 s, like common encoder settings)."""
    from mm_core.testing.media import write_video

    return write_video(path, seconds * fps, fps, *side, keyframe_every=2 * fps)


def measure(path: Path, backend: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(path), backend], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(seconds_list: list[int], baseline_up_to: int = 180) -> dict:
    """{seconds: {backend: measurement}} for each clip length."""
    try:
        import decord  # noqa: F401
        backends = ["decord", "pyav"]
    except ImportError:
        backends = ["pyav"]
    res: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in seconds_list:
            path = make_video(Path(tmp) / f"{seconds}s.mp4", seconds)
            row = {b: measure(path, b) for b in backends}
            if seconds <= baseline_up_to:
                row["decode_all_baseline"] = measure(path, "decode_all")
            res[str(seconds)] = row
            path.unlink()
    return res


def summary(res: dict) -> str:
    parts = []
    for seconds, row in res.items():
        cells = ", ".join(f"{b} +{m['added_rss_mb']:.0f} MB" for b, m in row.items())
        parts.append(f"{int(seconds) // 60}m{int(seconds) % 60:02d}s: {cells}")
    return "long video, RSS added by sampling 64 frames: " + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 s and 60 s only")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "long_video.json"))
    args = ap.parse_args(argv)
    res = run([10, 60] if args.quick else [60, 180, 600])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"{summary(res)} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
