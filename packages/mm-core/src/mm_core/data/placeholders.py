"""``<image>``/``<video>`` placeholders of a record's text replaced by what the model reads.

A formatter knows each medium's text (its vision tokens, markers, frame times) once the media are
measured; the placeholders take them in order across the whole conversation, as the HF processor
expands its own placeholders in order.
"""

from __future__ import annotations

from collections.abc import Iterator

from mm_core.data.bad_records import BadRecord
from mm_core.data.records import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER


def expand_placeholders(content: str, images: Iterator[str], videos: Iterator[str], where: str = "?") -> str:
    """``content`` with each placeholder replaced by the next text of its kind; a placeholder
    without a medium left is a ``placeholder_mismatch`` bad record."""
    out, pos = [], 0
    while True:
        i, v = content.find(IMAGE_PLACEHOLDER, pos), content.find(VIDEO_PLACEHOLDER, pos)
        if i < 0 and v < 0:
            out.append(content[pos:])
            return "".join(out)
        is_image = v < 0 or 0 <= i < v
        at = i if is_image else v
        media = next(images if is_image else videos, None)
        if media is None:
            raise BadRecord("placeholder_mismatch", where, "more vision placeholders than media")
        out.append(content[pos:at] + media)
        pos = at + len(IMAGE_PLACEHOLDER if is_image else VIDEO_PLACEHOLDER)
