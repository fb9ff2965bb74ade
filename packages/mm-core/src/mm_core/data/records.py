"""Readers for the mllm record format (JSON list or JSONL) with the ``attr`` column/role mapping.

A record becomes a :class:`Sample`: normalised roles (``system``/``user``/``assistant``, and
``observation`` where the formatter's template has that turn), string
contents that keep their ``<image>``/``<video>`` placeholders (records in InternVL's / LLaVA's
``conversations`` layout are read too: :mod:`mm_core.data.llava_layout`), and media paths resolved by the
one rule of :mod:`mm_core.data.paths` (relative to ``dataset_dir``, or absolute). Problems
are raised as :class:`BadRecord` with the file and line, never as a crash.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mm_core.data.bad_records import BadRecord, DataError
from mm_core.data.config import AttrParameters, BasicParameters, DataConfig
from mm_core.data.fewshot_layout import from_fewshot_layout, is_fewshot_layout
from mm_core.data.llava_layout import from_llava_layout, is_llava_layout
from mm_core.data.paths import resolve_media

IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"


@dataclass
class Sample:
    """One conversation ready for a formatter."""

    messages: list[dict[str, str]]  # {"role": "user"|"assistant", "content": str}
    images: list[str] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)
    system: str | None = None
    where: str = "?"


@dataclass(frozen=True)
class RawRecord:
    """A record as read: a parsed object, or the raw text of a JSONL line (parsed later)."""

    where: str
    value: Any  # dict (JSON list item) or str (JSONL line)


def dataset_files(basic: BasicParameters) -> list[Path]:
    """The files named by ``dataset`` (comma-separated, relative to ``dataset_dir``), checked to exist."""
    names = [n.strip() for n in basic.dataset.split(",") if n.strip()]
    if not names:
        raise DataError("basic_parameters.dataset is empty: give one or more .json/.jsonl files, comma-separated")
    files = []
    for name in names:
        path = Path(name) if os.path.isabs(name) else Path(basic.dataset_dir) / name
        if not path.is_file():
            raise DataError(f"basic_parameters.dataset: file '{path}' does not exist "
                            f"(dataset_dir='{basic.dataset_dir}')")
        files.append(path)
    return files


def _is_jsonl(path: Path) -> bool:
    if path.suffix == ".jsonl":
        return True
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    return not head.startswith(b"[")


def iter_raw_records(path: Path) -> Iterator[RawRecord]:
    """Records of one file in order; JSONL lines stay unparsed so a broken line is one bad record."""
    if _is_jsonl(path):
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    yield RawRecord(f"{path}:{lineno}", line)
        return
    try:
        with open(path, encoding="utf-8") as f:
            items = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}); a JSON file must hold one list of records "
                        "(use .jsonl for one record per line)") from None
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(items).__name__}")
    for i, item in enumerate(items):
        yield RawRecord(f"{path}[{i}]", item)


def iter_all_raw_records(basic: BasicParameters) -> Iterator[RawRecord]:
    """Every file's records in order, stopping at ``max_samples``."""
    n = 0
    for path in dataset_files(basic):
        for raw in iter_raw_records(path):
            if basic.max_samples is not None and n >= basic.max_samples:
                return
            n += 1
            yield raw


def _media_list(value: Any, key: str, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise BadRecord("bad_format", where, f"'{key}' must be a path or a list of paths")


# Roles some templates have beyond user/assistant/system; a turn with one takes a user slot (the
# turn after a reply), as in LLaMA-Factory's sharegpt files. Refused by name where the template lacks it.
PROMPT_SIDE_ROLES = {"observation": "a tool result"}


def template_roles(formatter: Any) -> tuple[str, ...]:
    """The extra roles (:data:`PROMPT_SIDE_ROLES`) ``formatter``'s template writes (its ``extra_roles``)."""
    return tuple(getattr(formatter, "extra_roles", ()))


def parse_for(raw: RawRecord, config: DataConfig, formatter: Any) -> Sample:
    """:func:`parse_record` with the data config's ``attr`` and ``dataset_dir`` and the formatter's roles."""
    return parse_record(raw, config.attr, config.basic_parameters.dataset_dir, extra_roles=template_roles(formatter),
                        template=config.basic_parameters.template)


def parse_record(raw: RawRecord, attr: AttrParameters, dataset_dir: str, *, extra_roles: Sequence[str] = (),
                 template: str | None = None) -> Sample:
    """Normalise one raw record (the ``attr`` mapping), or raise :class:`BadRecord`; ``extra_roles``:
    roles of :data:`PROMPT_SIDE_ROLES` the template (named ``template`` in errors) has."""
    where, value = raw.where, raw.value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise BadRecord("malformed_json", where, str(e)) from None
    if not isinstance(value, dict):
        raise BadRecord("malformed_json", where, f"expected a JSON object, got {type(value).__name__}")
    if is_llava_layout(value, attr):  # InternVL's / LLaVA's own files, read as they are
        value = from_llava_layout(value, attr)
    elif is_fewshot_layout(value, attr):  # VisualGLM's {"img", "prompt", "label"}
        value = from_fewshot_layout(value, attr)
    turns = value.get(attr.messages)
    if not isinstance(turns, list) or not turns:
        raise BadRecord("bad_format", where, f"no '{attr.messages}' list")
    roles = {attr.user_tag: "user", attr.assistant_tag: "assistant", attr.system_tag: "system"}
    roles |= {r: r for r in extra_roles}
    system = value.get(attr.system) if isinstance(value.get(attr.system), str) else None
    messages: list[dict[str, str]] = []
    for n, turn in enumerate(turns):
        role = turn.get(attr.role_tag) if isinstance(turn, dict) else None
        if role in PROMPT_SIDE_ROLES and role not in roles:
            raise BadRecord("bad_format", where, f"turn {n}: '{attr.role_tag}' is '{role}' ({PROMPT_SIDE_ROLES[role]}), "
                                                 f"which template '{template or '?'}' has no turn for; valid roles: "
                                                 f"{', '.join(sorted(roles))}")
        if role not in roles:
            raise BadRecord("bad_format", where, f"turn {turn!r:.80} has no role among {sorted(roles)} "
                                                 f"(attr.role_tag='{attr.role_tag}')")
        content = turn.get(attr.content_tag)
        if not isinstance(content, str):
            raise BadRecord("bad_format", where, f"turn content '{attr.content_tag}' is not a string")
        role = roles[role]
        if role == "system":
            if messages:
                raise BadRecord("bad_format", where, "a system turn must come first")
            system = content
            continue
        messages.append({"role": role, "content": content})
    while messages and messages[-1]["role"] != "assistant":
        messages.pop()  # a trailing question has no answer to learn from
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRecord("no_assistant", where, "no assistant turn")
    for i, m in enumerate(messages):
        if (m["role"] == "assistant") == (i % 2 == 1) and (i > 0 or m["role"] == "user"):
            continue
        side = f"user or {', '.join(extra_roles)}" if extra_roles else "user"
        raise BadRecord("bad_format", where, f"turns must alternate user, assistant, {side}, assistant, ...")
    images = _media_list(value.get(attr.images), attr.images, where)
    videos = _media_list(value.get(attr.videos), attr.videos, where)
    text = "".join(m["content"] for m in messages)
    for tag, media in ((IMAGE_PLACEHOLDER, images), (VIDEO_PLACEHOLDER, videos)):
        if text.count(tag) != len(media):
            raise BadRecord("placeholder_mismatch", where,
                            f"{text.count(tag)} {tag} placeholder(s) but {len(media)} file(s)")
    images = [resolve_media(p, dataset_dir, where) for p in images]
    videos = [resolve_media(p, dataset_dir, where) for p in videos]
    return Sample(messages, images, videos, system, where)
