"""`mm-run data inspect`: what a data config yields, without training.

Counts records, usable samples, bad records by reason, token lengths (histogram) and vision
tokens, using the same pre-pass as the map-style loader (image headers only, no pixels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mm_core.data.bad_records import BadRecord, BadRecordStats
from mm_core.data.config import DataConfig
from mm_core.data.index import build_index
from mm_core.data.packing import pack_rows, packing_efficiency
from mm_core.data.records import iter_all_raw_records, parse_for


def inspect_data(config: DataConfig, formatter: Any, *, seq_len: int | None = None, bins: int = 10,
                 on_bad: Callable[[BadRecord], None] | None = None) -> dict[str, Any]:
    """A JSON-able summary of the data config's records; ``on_bad`` sees every bad record (the
    summary keeps a few examples of each reason)."""
    raws = list(iter_all_raw_records(config.basic_parameters))
    index = build_index(raws, config, formatter)
    stats = BadRecordStats(log=False)  # the summary lists them
    for bad in index.bad_records():
        stats.add(bad)
        if on_bad is not None:
            on_bad(bad)
    lengths = [n for n in index.lengths if n >= 0]
    if seq_len is not None:
        for i, n in enumerate(index.lengths):
            if n > seq_len:
                stats.add(bad := BadRecord("too_long", index.wheres[i], f"{n} tokens > {seq_len}"))
                if on_bad is not None:
                    on_bad(bad)
        lengths = [n for n in lengths if n <= seq_len]
    n_images = n_videos = 0
    vision_tokens = 0
    vision_ids = {getattr(formatter, "image_token_id", None), getattr(formatter, "video_token_id", None)} - {None}
    for i, n in enumerate(index.lengths):
        if n < 0 or (seq_len is not None and n > seq_len):
            continue
        sample = parse_for(raws[i], config, formatter)
        n_images, n_videos = n_images + len(sample.images), n_videos + len(sample.videos)
        if (sample.images or sample.videos) and vision_ids:
            vision_tokens += sum(t in vision_ids for t in formatter.encode(sample, pixels=False)["input_ids"])
    hist: list[dict[str, int]] = []
    if lengths:
        lo, hi = min(lengths), max(lengths)
        width = max(1, -(-(hi - lo + 1) // bins))
        for b in range(bins):
            a = lo + b * width
            if a > hi:
                break
            hist.append({"from": a, "to": a + width - 1, "count": sum(a <= n < a + width for n in lengths)})
    out: dict[str, Any] = {
        "records": len(raws), "usable": len(lengths), "bad_records": dict(stats.counts),
        "bad_examples": stats.examples, "tokens": sum(lengths),
        "length": {"min": min(lengths, default=0), "max": max(lengths, default=0),
                   "mean": sum(lengths) / len(lengths) if lengths else 0.0},
        "histogram": hist, "images": n_images, "videos": n_videos, "vision_tokens": vision_tokens,
    }
    if seq_len is not None and lengths:
        out["packing_efficiency"] = packing_efficiency(pack_rows(lengths, seq_len), lengths, seq_len)
    return out
