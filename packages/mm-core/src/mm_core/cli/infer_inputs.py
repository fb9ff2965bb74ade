"""What `mm-run infer` is asked: the model argument, the records, and each record's media.

A bad item (a JSONL line that does not parse, a record without a prompt, a media file that is
missing, empty or undecodable) is an :class:`ItemError` with one line naming the record, the file
and the reason, so the run reports it, answers the other items, and exits non-zero at the end.
Images and videos are read by the data pipeline's own readers (``mm_core.data.media``): the same
decoding, and the same evenly spread video frames, as in training.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mm_core.errors import ConfigError

HUB_PREFIX = "hf://"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ItemError(Exception):
    """One input item cannot be answered; the message is one line."""


@dataclass
class Item:
    """One question: its record (prompt, media paths, system) or the reason it cannot be asked."""

    where: str  # "prompts.jsonl:3", "prompts.json[2]" or "the command line"
    record: dict[str, Any]
    error: str | None = None


@dataclass
class Media:
    """Decoded images (PIL) and videos (frames ``[T, H, W, 3]`` uint8 with their sampled rate), and
    the second each video frame was shown at (templates that write times into the prompt use them)."""

    images: list[Any] = field(default_factory=list)
    videos: list[tuple[Any, float]] = field(default_factory=list)
    video_seconds: list[list[float]] = field(default_factory=list)


def resolve_model(value: str) -> Path:
    """``--model`` as a local directory: an existing one, or ``hf://OWNER/NAME`` fetched into the Hub
    cache. Anything else is an error that says which of the two it should be."""
    if value.startswith(HUB_PREFIX):
        repo = value[len(HUB_PREFIX):]
        if not _HUB_ID.match(repo):
            raise ConfigError(f"--model {value}: a Hub model is hf://OWNER/NAME, e.g. hf://Qwen/Qwen2.5-VL-7B-Instruct")
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(repo))
        except Exception as e:  # offline, no such repo, no access: one line, no traceback
            raise ConfigError(f"--model {value}: cannot fetch it from the Hub ({_one_line(e)}); download it "
                              f"with `huggingface-cli download {repo} --local-dir DIR` and pass --model DIR") from None
    path = Path(value)
    if not path.exists():
        hint = f" (for a Hub model write hf://{value})" if _HUB_ID.match(value) else ""
        raise ConfigError(f"--model {value}: no such directory; give an HF model or mm checkpoint directory{hint}")
    if not path.is_dir():
        raise ConfigError(f"--model {value}: is a file; give the model's directory")
    if not ((path / "config.json").is_file() or (path / "latest_checkpointed_iteration.txt").is_file()):
        raise ConfigError(f"--model {value}: holds neither an HF model (config.json + *.safetensors) nor an mm "
                          "checkpoint (latest_checkpointed_iteration.txt); point it at the model's directory")
    return path


def _one_line(e: BaseException | str) -> str:
    return " ".join(str(e).split())


def _parse_file(path: Path) -> list[tuple[str, Any]]:
    """(where, value) per record of a JSON list, one JSON object, or JSONL; a JSONL line that does
    not parse becomes an error value (a str), not a failed run."""
    text = path.read_text()
    try:
        data = json.loads(text)
        return [(f"{path}[{i}]", r) for i, r in enumerate(data)] if isinstance(data, list) else [(str(path), data)]
    except json.JSONDecodeError:
        pass
    out: list[tuple[str, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((f"{path}:{n}", json.loads(line)))
            except json.JSONDecodeError as e:
                out.append((f"{path}:{n}", ItemError(f"not valid JSON ({e})")))
    return out


def read_items(input_file: str | None, prompt: str | None, images: list[str], videos: list[str],
               system: str | None) -> list[Item]:
    """The items to answer, in order; media paths of a file's records are relative to that file."""
    if input_file:
        path = Path(input_file)
        if not path.is_file():
            raise ConfigError(f"--input {path}: no such file")
        raw, base = _parse_file(path), path.parent
    else:
        if not prompt:
            raise ConfigError("give --prompt (with --image/--video), or a batch file with --input")
        raw, base = [("the command line", {"prompt": prompt, "images": images, "videos": videos})], Path.cwd()
    items = []
    for where, r in raw:
        if isinstance(r, ItemError):
            items.append(Item(where, {}, f"{where}: {r}"))
            continue
        if not isinstance(r, dict) or not isinstance(r.get("prompt", r.get("query")), str):
            items.append(Item(where, r if isinstance(r, dict) else {}, f"{where}: the record needs a string 'prompt'"))
            continue
        imgs = list(r.get("images") or []) + ([r["image"]] if r.get("image") else [])
        vids = list(r.get("videos") or []) + ([r["video"]] if r.get("video") else [])
        items.append(Item(where, {**r, "prompt": r.get("prompt", r.get("query")),
                                  "images": [str(base / m) for m in imgs], "videos": [str(base / m) for m in vids],
                                  "system": r.get("system", system)}))
    return items


def _check_file(path: str, where: str) -> None:
    if not os.path.exists(path):
        raise ItemError(f"{where}: file '{path}' does not exist")
    if not os.path.isfile(path):
        raise ItemError(f"{where}: '{path}' is not a file")
    if os.path.getsize(path) == 0:
        raise ItemError(f"{where}: file '{path}' is empty (0 bytes)")


def load_media(record: dict[str, Any], where: str, *, video_fps: float, max_video_frames: int) -> Media:
    """Decode the record's images and videos, or raise :class:`ItemError` naming the file and why."""
    from mm_core.data.bad_records import BadRecord
    from mm_core.data.media import load_image
    from mm_core.inference.video_frames import sampled_video

    media = Media()
    for path in record["images"] + record["videos"]:
        _check_file(path, where)
    try:
        media.images = [load_image(p, where) for p in record["images"]]
        for p in record["videos"]:  # unpadded: the family's processor pads to its temporal patch
            frames, rate, seconds = sampled_video(p, where, video_fps, max_video_frames)
            media.videos.append((frames, rate))
            media.video_seconds.append(seconds)
    except BadRecord as e:
        raise ItemError(f"{where}: {_one_line(e.detail)}") from None
    return media
