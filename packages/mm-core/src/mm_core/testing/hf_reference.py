"""What family tests compare against: transformers' processor and ``generate``, driven the way a
user of the HF checkpoint would drive them (independent of mm's formatter and ``mm-run infer``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def hf_content(text: str) -> list[dict[str, Any]]:
    """'<image>\\nWhat?' -> the processor's content list (image, video and text items, in order)."""
    items: list[dict[str, Any]] = []
    for piece in text.replace("<video>", "\0video\0").replace("<image>", "\0image\0").split("\0"):
        if piece in ("image", "video"):
            items.append({"type": piece})
        elif piece:
            items.append({"type": "text", "text": piece})
    return items


def greedy_replies(model: Any, batch: Mapping[str, Any], stop_ids: Iterable[int], max_new_tokens: int) -> list[list[int]]:
    """transformers' greedy reply per row of ``batch``, cut after its first stop id (as infer stops)."""
    import torch

    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    stops = set(stop_ids)
    rows = []
    for tokens in out[:, batch["input_ids"].shape[1]:].tolist():
        cut = next((i + 1 for i, t in enumerate(tokens) if t in stops), len(tokens))
        rows.append(tokens[:cut])
    return rows


def hf_video_inputs(processor: Any, prompt: str, path: str, indices: list[int]) -> dict[str, Any]:
    """The HF processor's inputs for one video question, as a user of the checkpoint builds them:
    every frame decoded here (PyAV), frames ``indices`` picked, metadata from the container's rate;
    the processor pads the clip to its own temporal patch."""
    import av
    import numpy as np
    from transformers.video_utils import VideoMetadata

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        fps = float(stream.average_rate)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(stream)])
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    meta = VideoMetadata(total_num_frames=len(frames), fps=fps, frames_indices=list(indices))
    return dict(processor(text=[text], videos=[frames[list(indices)]], video_metadata=[meta], do_sample_frames=False,
                          return_tensors="pt"))


def infer_video_matches_hf(processor: Any, path: str, indices: list[int]) -> dict[str, Any]:
    """``mm-run infer``'s batch for a video question, checked equal, key by key, to
    :func:`hf_video_inputs` on frames ``indices`` (the sampling rule's); returned for family checks."""
    import torch

    from mm_core.cli.infer_batch import prepare_batch

    prompt = "What happens?"
    ours = prepare_batch(processor, [{"prompt": prompt, "images": [], "videos": [str(path)], "system": None}])
    ref = hf_video_inputs(processor, prompt, path, indices)
    assert ours.keys() == ref.keys(), (sorted(ours), sorted(ref))
    for key, want in ref.items():
        assert ours[key].shape == want.shape and torch.equal(ours[key], want.to(ours[key].dtype)), key
    return ours
