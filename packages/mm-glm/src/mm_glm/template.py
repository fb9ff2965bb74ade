"""The GLM-4.1V conversation text, and which of its characters carry a loss.

The text is what the checkpoint's chat template writes, with each image and video placeholder
already expanded as ``Glm4vProcessor`` expands it:

    [gMASK]<sop><|system|>\\n{system}<|user|>\\n{question}<|assistant|>\\n{reply}<|user|>\\n...

- image: ``<|begin_of_image|>`` + ``<|image|>`` x (t*h*w / merge^2) + ``<|end_of_image|>``;
- video: ``<|begin_of_video|>``, then per group of 2 frames ``<|begin_of_image|>`` + ``<|image|>`` x
  (h*w / merge^2) + ``<|end_of_image|>`` + the group's first frame time in whole seconds, then
  ``<|end_of_video|>`` (the frames use the image token; the video markers tell them apart);
- a tool result is an ``observation`` turn: ``<|observation|>\\n{result}``.

GLM has no end-of-turn token: a reply ends where the next ``<|user|>``/``<|observation|>`` starts
(both are stop tokens of the checkpoint's generation config), and the conversation ends with
``<|endoftext|>``, which the chat template does not write (LLaMA-Factory's and MindSpeed-MM's
``efficient_eos``). A trained reply's labels cover its text and that following stop token, so the
model learns to stop; ``<|assistant|>\\n`` is prompt, as at inference, where the generation prompt
ends with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mm_core.data.bad_records import BadRecord
from mm_core.data.label_spans import Span, subtract_span
from mm_core.data.placeholders import expand_placeholders
from mm_core.data.thinking import thinking_span

PREFIX = "[gMASK]<sop>"
ROLE_MARKERS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>",
                "observation": "<|observation|>"}
END_OF_TEXT = "<|endoftext|>"
IMAGE_TOKEN, VIDEO_TOKEN = "<|image|>", "<|video|>"
BEGIN_IMAGE, END_IMAGE = "<|begin_of_image|>", "<|end_of_image|>"
BEGIN_VIDEO, END_VIDEO = "<|begin_of_video|>", "<|end_of_video|>"
STOP_MARKERS = (ROLE_MARKERS["user"], ROLE_MARKERS["observation"], END_OF_TEXT)  # what ends a reply


def image_text(tokens: int) -> str:
    """One image as the model reads it."""
    return BEGIN_IMAGE + IMAGE_TOKEN * tokens + END_IMAGE


def video_text(tokens_per_group: int, seconds: Sequence[float]) -> str:
    """One video: a frame group per entry of ``seconds`` (each group's first frame), as the processor
    writes it (whole seconds, truncated)."""
    groups = "".join(f"{image_text(tokens_per_group)}{int(s)}" for s in seconds)
    return BEGIN_VIDEO + groups + END_VIDEO


@dataclass(frozen=True)
class Rendered:
    """The conversation text and the character spans whose tokens are labels."""

    text: str
    label_spans: list[Span]


def render(messages: Sequence[dict[str, str]], system: str | None, image_texts: Sequence[str],
           video_texts: Sequence[str], *, train_on_prompt: bool = False, mask_history: bool = False,
           train_on_thinking: bool = True, where: str = "?") -> Rendered:
    """The GLM text of a conversation (roles ``user``, ``observation``, ``assistant``) and its label
    spans: every assistant reply (only the last with ``mask_history``) and its stop token; without
    ``train_on_thinking`` a reply's ``<think>...</think>`` is left out; ``train_on_prompt``: all text."""
    images, videos = iter(image_texts), iter(video_texts)
    trained = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if mask_history:
        trained = trained[-1:]
    text = PREFIX + (f"{ROLE_MARKERS['system']}\n{system}" if system is not None else "")
    replies: list[tuple[int, int, str]] = []  # trained replies: content start, content end, content
    for i, m in enumerate(messages):
        if m["role"] not in ("user", "observation", "assistant"):
            raise BadRecord("bad_format", where, f"role '{m['role']}' has no GLM-4.1V turn; "
                                                 "use user, observation or assistant")
        content = expand_placeholders(m["content"], images, videos, where)
        text += ROLE_MARKERS[m["role"]] + "\n"
        if i in trained:
            replies.append((len(text), len(text) + len(content), content))
        text += content
    text += END_OF_TEXT
    spans: list[Span] = [(0, len(text))] if train_on_prompt else []
    for start, end, _content in replies:
        stop = next((m for m in STOP_MARKERS if text.startswith(m, end)), "")
        spans.append((start, end + len(stop)))
    if not train_on_thinking:
        for start, _end, content in replies:
            cut = thinking_span(content)
            if cut is not None:
                spans = subtract_span(sorted(spans), (start + cut[0], start + cut[1]))
    return Rendered(text, spans)


def mm_token_type_ids(input_ids: torch.Tensor, image_token_id: int, video_start_id: int,
                      video_end_id: int) -> torch.Tensor:
    """0 text, 1 image, 2 video frame, per token of ``input_ids`` ``[..., T]`` (what ``Glm4vProcessor``
    returns as ``mm_token_type_ids``): video frames use the image token inside the video markers."""
    in_video = torch.cumsum(input_ids == video_start_id, -1) > torch.cumsum(input_ids == video_end_id, -1)
    is_image = input_ids == image_token_id
    return is_image.long() + (is_image & in_video).long()
