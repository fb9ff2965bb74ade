"""Records in the LLaVA / InternVL layout, read as they are (no conversion step needed).

InternVL's own training files are JSONL records ``{"image": "a.jpg" | ["a.jpg", ...], "video": "v.mp4",
"conversations": [{"from": "human" | "gpt" | "system", "value": ...}]}`` (LLaVA-Instruct's too, as a
JSON list). A record without the configured messages column but with ``conversations`` is rewritten
into the ``attr`` layout before it is parsed, with InternVL's rule for a missing placeholder: a record
with one image (or one video) whose text has no ``<image>`` (``<video>``) gets ``<image>\\n``
(``<video>\\n``) in front of its first human turn.
"""

from __future__ import annotations

from typing import Any

from mm_core.data.config import AttrParameters
from mm_core.data.llava import ROLES  # human/gpt/system -> user/assistant/system, as llava-to-mllm maps them

CONVERSATIONS = "conversations"


def is_llava_layout(value: dict[str, Any], attr: AttrParameters) -> bool:
    """The record has ``conversations`` and not the configured messages column."""
    return attr.messages not in value and isinstance(value.get(CONVERSATIONS), list)


def _media(value: Any) -> list[Any]:
    return [] if value is None else value if isinstance(value, list) else [value]


def from_llava_layout(value: dict[str, Any], attr: AttrParameters) -> dict[str, Any]:
    """``value`` in the ``attr`` layout (roles and column names mapped; turns that are not dicts, or
    have unknown roles, are passed on so the parser reports them)."""
    tags = {"user": attr.user_tag, "assistant": attr.assistant_tag, "system": attr.system_tag}
    turns = []
    for turn in value[CONVERSATIONS]:
        if isinstance(turn, dict) and turn.get("from") in ROLES:
            turn = {attr.role_tag: tags[ROLES[turn["from"]]], attr.content_tag: turn.get("value")}
        turns.append(turn)
    images, videos = _media(value.get("image", value.get("images"))), _media(value.get("video", value.get("videos")))
    texts = [t.get(attr.content_tag) for t in turns if isinstance(t, dict)]
    text = "".join(t for t in texts if isinstance(t, str))
    first_user = next((t for t in turns if isinstance(t, dict) and t.get(attr.role_tag) == attr.user_tag
                       and isinstance(t.get(attr.content_tag), str)), None)
    for tag, media in (("<video>", videos), ("<image>", images)):
        if len(media) == 1 and tag not in text and first_user is not None:
            first_user[attr.content_tag] = f"{tag}\n" + first_user[attr.content_tag]
    out = {k: v for k, v in value.items() if k not in (CONVERSATIONS, "image", "video", "images", "videos")}
    return out | {attr.messages: turns, attr.images: images, attr.videos: videos}
