"""Single-turn few-shot records ``{"img": path, "prompt": str, "label": str}`` read as they are.

VisualGLM-6B's fine-tuning files (``fewshot-data/dataset.json``) are a JSON list of such records. A
record without the configured messages column but with ``prompt`` and ``label`` is rewritten into the
``attr`` layout before it is parsed: the user turn is ``<image>`` + prompt (the image comes first, as
VisualGLM's prompt puts it), the assistant turn the label.
"""

from __future__ import annotations

from typing import Any

from mm_core.data.config import AttrParameters

KEYS = ("prompt", "label")


def is_fewshot_layout(value: dict[str, Any], attr: AttrParameters) -> bool:
    return attr.messages not in value and all(k in value for k in KEYS)


def from_fewshot_layout(value: dict[str, Any], attr: AttrParameters) -> dict[str, Any]:
    """``value`` in the ``attr`` layout; non-string fields are passed on for the parser to report."""
    image = value.get("img")
    prompt, label = value["prompt"], value["label"]
    user = f"<image>{prompt}" if image and isinstance(prompt, str) else prompt
    rest = {k: v for k, v in value.items() if k not in (*KEYS, "img")}
    return rest | {attr.messages: [{attr.role_tag: attr.user_tag, attr.content_tag: user},
                                   {attr.role_tag: attr.assistant_tag, attr.content_tag: label}],
                   attr.images: [image] if image else []}
