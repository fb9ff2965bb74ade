"""What `mm-run infer` feeds the model: chat-templated prompts through the model's own HF processor,
and the ids that end a reply.

Videos reach the processor as the frames the data pipeline sampled, with metadata that tells the
truth about them: the rate they stand for (Qwen2.5-VL's temporal rotary) and the second each frame
was shown at (GLM-4.1V writes those seconds into the prompt), the same values the training
formatters use (``mm_core.data.video_times``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from mm_core.cli.infer_inputs import Media, load_media


def _messages(record: dict[str, Any]) -> list[dict[str, Any]]:
    content = [{"type": "image"} for _ in record["images"]] + [{"type": "video"} for _ in record["videos"]]
    content.append({"type": "text", "text": record["prompt"]})
    msgs = [{"role": "user", "content": content}]
    if record.get("system"):
        msgs.insert(0, {"role": "system", "content": record["system"]})
    return msgs


@cache
def _sampled_frames_class() -> type:
    from transformers.video_utils import VideoMetadata  # imported on first use: transformers is heavy

    @dataclass
    class SampledFrames(VideoMetadata):
        """Metadata of frames sampled already: ``timestamps`` and ``sampled_fps`` as measured."""

        seconds: list[float] = field(default_factory=list)
        rate: float = 0.0

        @property
        def timestamps(self) -> list[float]:
            return list(self.seconds)

        @property
        def sampled_fps(self) -> float:
            return self.rate

    return SampledFrames


def video_metadata(frames: Any, rate: float, seconds: list[float]) -> Any:
    """transformers' ``VideoMetadata`` of already sampled frames whose ``sampled_fps`` is ``rate`` and
    whose ``timestamps`` are ``seconds`` (plain metadata would derive both from frame indices,
    which a sampled, even-padded clip does not have)."""
    return _sampled_frames_class()(total_num_frames=len(frames), fps=rate, width=frames.shape[2], height=frames.shape[1],
                         duration=len(frames) / rate, frames_indices=list(range(len(frames))),
                         seconds=list(seconds), rate=rate)


def prepare_batch(processor: Any, records: list[dict[str, Any]], *, video_fps: float = 2.0,
                  max_video_frames: int = 32, media: list[Media] | None = None) -> dict[str, Any]:
    """Chat-template the records and run the processor (left padding, for generation); ``media``:
    the records' decoded media when already loaded (else they are loaded here)."""
    if media is None:
        media = [load_media(r, f"record {i}", video_fps=video_fps, max_video_frames=max_video_frames)
                 for i, r in enumerate(records)]
    texts = [processor.apply_chat_template(_messages(r), add_generation_prompt=True, tokenize=False)
             for r in records]
    images = [im for m in media for im in m.images]
    videos = [frames for m in media for frames, _ in m.videos]
    metas = [video_metadata(frames, rate, seconds) for m in media
             for (frames, rate), seconds in zip(m.videos, m.video_seconds)]
    processor.tokenizer.padding_side = "left"
    kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
    if images:
        kwargs["images"] = images
    if videos:
        kwargs["videos"] = videos
        kwargs["videos_kwargs"] = {"video_metadata": metas, "do_sample_frames": False}
    return dict(processor(**kwargs))


def _eos_ids(value: Any) -> list[int]:
    return [int(i) for i in value] if isinstance(value, list) else ([int(value)] if value is not None else [])


def stop_token_ids(model_dir: Path, tokenizer: Any) -> list[int]:
    """End-of-turn ids: generation_config.json's eos ids (else config.json's, or its text_config's:
    GLM-4.1V ends a turn on ``<|user|>`` and ``<|observation|>`` too), plus the tokenizer's eos."""
    ids: list[int] = []
    gen, cfg = model_dir / "generation_config.json", model_dir / "config.json"
    if gen.is_file():
        ids += _eos_ids(json.loads(gen.read_text()).get("eos_token_id"))
    elif cfg.is_file():
        config = json.loads(cfg.read_text())
        ids += _eos_ids(config.get("eos_token_id", (config.get("text_config") or {}).get("eos_token_id")))
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))
