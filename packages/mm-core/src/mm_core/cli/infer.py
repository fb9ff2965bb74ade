"""`mm-run infer`: answer prompts about images and videos with a model from an HF or mm directory.

    mm-run infer --model ckpt/hf/Qwen2.5-VL-7B-Instruct --image a.jpg --prompt "Describe this image."
    mm-run infer --model ckpt/mm/Qwen2.5-VL-7B-Instruct --processor ckpt/hf/Qwen2.5-VL-7B-Instruct \\
        --video clip.mp4 --prompt "What happens?" --max-new-tokens 64
    mm-run infer --model DIR --input prompts.jsonl --output answers.jsonl

The tokenizer, chat template and processor come from the HF directory (``--processor`` when the
model is an mm directory). A batch file is JSON (a list) or JSONL of records
``{"prompt": str, "images": [paths], "videos": [paths], "system": str}`` (``image``/``video`` for a
single path also work; relative paths are relative to the file). Answers print one per line, or as
JSONL records with ``answer`` and ``token_ids`` added when a batch file or ``--output`` is used. A
Thinking model's ``<think>...</think>`` is shown apart from its answer (``infer_thinking``).
An item that cannot be answered (bad record, missing or undecodable media) gets a one-line error
on stderr (and an ``error`` field in JSONL), the others are answered, and the exit status is 1.
``--model`` is an existing directory, or ``hf://OWNER/NAME`` for a Hub model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from mm_core.cli.infer_inputs import Item, ItemError, Media, load_media, read_items, resolve_model
from mm_core.cli.infer_thinking import answer_fields, decode_reply, display_text
from mm_core.errors import ConfigError

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF model directory or mm checkpoint directory "
                                                  "(hf://OWNER/NAME: a Hub model, fetched into the Hub cache)")
    p.add_argument("--processor", help="HF directory with tokenizer/processor files (default: --model)")
    p.add_argument("--prompt", help="the question (single-prompt mode)")
    p.add_argument("--image", action="append", default=[], help="an image path; repeat for several")
    p.add_argument("--video", action="append", default=[], help="a video path; repeat for several")
    p.add_argument("--system", help="system prompt (default: the chat template's)")
    p.add_argument("--input", help="JSON or JSONL file of records (batch mode)")
    p.add_argument("--output", help="write JSONL records with the answers here")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--video-fps", type=float, default=2.0, help="frames per second sampled from videos")
    p.add_argument("--max-video-frames", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu, cuda, npu")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--iteration", help="mm dir: which iteration to load (default: latest)")


def _messages(record: dict[str, Any]) -> list[dict[str, Any]]:
    content = [{"type": "image"} for _ in record["images"]] + [{"type": "video"} for _ in record["videos"]]
    content.append({"type": "text", "text": record["prompt"]})
    msgs = [{"role": "user", "content": content}]
    if record.get("system"):
        msgs.insert(0, {"role": "system", "content": record["system"]})
    return msgs


def prepare_batch(processor: Any, records: list[dict[str, Any]], *, video_fps: float = 2.0,
                  max_video_frames: int = 32, media: list[Media] | None = None) -> dict[str, Any]:
    """Chat-template the records and run the processor (left padding, for generation); ``media``:
    the records' decoded media when already loaded (else they are loaded here)."""
    from transformers.video_utils import VideoMetadata

    if media is None:
        media = [load_media(r, f"record {i}", video_fps=video_fps, max_video_frames=max_video_frames)
                 for i, r in enumerate(records)]
    texts = [processor.apply_chat_template(_messages(r), add_generation_prompt=True, tokenize=False)
             for r in records]
    images = [im for m in media for im in m.images]
    videos, metas = [], []
    for frames, rate in (v for m in media for v in m.videos):
        videos.append(frames)
        metas.append(VideoMetadata(total_num_frames=len(frames), fps=rate, width=frames.shape[2],
                                   height=frames.shape[1], duration=len(frames) / rate,
                                   frames_indices=list(range(len(frames)))))
    processor.tokenizer.padding_side = "left"
    kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
    if images:
        kwargs["images"] = images
    if videos:
        kwargs["videos"] = videos
        kwargs["videos_kwargs"] = {"video_metadata": metas, "do_sample_frames": False}
    return dict(processor(**kwargs))


def stop_token_ids(model_dir: Path, tokenizer: Any) -> list[int]:
    """End-of-turn ids: generation_config.json's eos ids plus the tokenizer's eos."""
    ids: list[int] = []
    gen = model_dir / "generation_config.json"
    if gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids += eos if isinstance(eos, list) else ([eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


def _answerable(chunk: list[Item], args: argparse.Namespace) -> tuple[list[Item], list[Media]]:
    """The chunk's items whose media decode (with their media); the others get their error."""
    good, media = [], []
    for item in chunk:
        if item.error is None:
            try:
                media.append(load_media(item.record, item.where, video_fps=args.video_fps,
                                        max_video_frames=args.max_video_frames))
                good.append(item)
                continue
            except ItemError as e:
                item.error = str(e)
    return good, media


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoProcessor

    from mm_core.generation import GenerationConfig, generate
    from mm_core.nn.pretrained import is_mm_dir, load_pretrained

    model_dir = resolve_model(args.model)
    proc_dir = Path(args.processor) if args.processor else model_dir
    if is_mm_dir(model_dir) and not args.processor:
        raise ConfigError(f"--model {model_dir} is an mm checkpoint: add --processor <the original HF directory>")
    items = read_items(args.input, args.prompt, args.image, args.video, args.system)
    try:
        processor = AutoProcessor.from_pretrained(proc_dir, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{proc_dir}: no usable tokenizer/processor files ({e}); pass --processor "
                          "<the HF directory the model came from>") from e
    dtype = getattr(torch, DTYPES[args.dtype])
    t0 = time.perf_counter()
    model = load_pretrained(model_dir, hf_config=proc_dir if args.processor else None, device=args.device,
                            dtype=dtype, iteration=args.iteration).eval()
    print(f"loaded {model_dir} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    gen_dir = model_dir if (model_dir / "generation_config.json").is_file() else proc_dir
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                           temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                           stop_token_ids=stop_token_ids(gen_dir, processor.tokenizer), seed=args.seed)
    as_json = bool(args.input or args.output)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    sink = open(args.output, "w") if args.output else None  # noqa: SIM115 - closed below

    def emit(line: str) -> None:
        print(line) if sink is None else sink.write(line + "\n")

    failed = 0
    try:
        for start in range(0, len(items), args.batch_size):
            chunk = items[start:start + args.batch_size]
            good, media = _answerable(chunk, args)
            answers: dict[int, tuple[str, list[int]]] = {}
            if good:
                batch = prepare_batch(processor, [i.record for i in good], media=media)
                batch = {k: v.to(args.device) if hasattr(v, "to") else v for k, v in batch.items()}
                for key in ("pixel_values", "pixel_values_videos"):
                    if key in batch:
                        batch[key] = batch[key].to(dtype)
                t1 = time.perf_counter()
                new = generate(model, batch, cfg)
                print(f"generated {sum(len(t) for t in new)} tokens in {time.perf_counter() - t1:.2f}s", file=sys.stderr)
                answers = {id(i): (decode_reply(processor.tokenizer, t), t) for i, t in zip(good, new)}
            for item in chunk:  # in input order, failures included
                if item.error is not None:
                    failed += 1
                    print(f"mm-run infer: error: {item.error}", file=sys.stderr)
                    if as_json:
                        emit(json.dumps({**item.record, "error": item.error}, ensure_ascii=False))
                    continue
                text, tokens = answers[id(item)]
                if as_json:
                    emit(json.dumps({**item.record, **answer_fields(text), "token_ids": tokens}, ensure_ascii=False))
                if not as_json or sink is not None:
                    print(display_text(text))
    finally:
        if sink is not None:
            sink.close()
    if failed:
        print(f"mm-run infer: {failed} of {len(items)} item(s) failed (see the errors above)", file=sys.stderr)
    return 1 if failed else 0
