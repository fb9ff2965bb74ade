"""`mm-run infer`: answer prompts about images and videos with a model from an HF or mm directory.

    mm-run infer --model ckpt/hf/Qwen2.5-VL-7B-Instruct --image a.jpg --prompt "Describe this image."
    mm-run infer --model ckpt/mm/Qwen2.5-VL-7B-Instruct --processor ckpt/hf/Qwen2.5-VL-7B-Instruct \\
        --video clip.mp4 --prompt "What happens?" --max-new-tokens 64
    mm-run infer --model DIR --input prompts.jsonl --output answers.jsonl

The tokenizer, chat template and processor come from the HF directory (``--processor`` when the
model is an mm directory). A batch file is JSON (a list) or JSONL of records
``{"prompt": str, "images": [paths], "videos": [paths], "system": str}`` (``image``/``video`` for a
single path also work; relative paths are relative to the file). Answers print one per line, or as
JSONL records with ``answer`` and ``token_ids`` added when a batch file or ``--output`` is used.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from mm_core.errors import ConfigError

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF model directory or mm checkpoint directory")
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


def _records(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.input:
        path = Path(args.input)
        if not path.is_file():
            raise ConfigError(f"--input {path}: no such file")
        text = path.read_text()
        try:
            data = json.loads(text)
            records = data if isinstance(data, list) else [data]
        except json.JSONDecodeError:
            records = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ConfigError(f"{path}:{n}: not valid JSON ({e})") from e
        base = path.parent
    else:
        if not args.prompt:
            raise ConfigError("give --prompt (with --image/--video), or a batch file with --input")
        records, base = [{"prompt": args.prompt, "images": args.image, "videos": args.video}], Path.cwd()
    out = []
    for n, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("prompt", r.get("query")), str):
            raise ConfigError(f"record {n} of {args.input or 'the command line'} needs a string 'prompt'")
        images = list(r.get("images") or []) + ([r["image"]] if r.get("image") else [])
        videos = list(r.get("videos") or []) + ([r["video"]] if r.get("video") else [])
        for media in images + videos:
            if not (base / media).is_file():
                raise ConfigError(f"record {n}: media file {base / media} does not exist")
        out.append({**r, "prompt": r.get("prompt", r.get("query")), "images": [str(base / m) for m in images],
                    "videos": [str(base / m) for m in videos], "system": r.get("system", args.system)})
    return out


def _read_video(path: str, fps: float, max_frames: int):
    """Frames sampled at ``fps`` (at most ``max_frames``) as ``[T, H, W, 3]`` uint8, and their rate."""
    import av
    import numpy as np

    with av.open(path) as container:
        stream = container.streams.video[0]
        src_fps = float(stream.average_rate or 24)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ConfigError(f"{path}: no video frames could be decoded")
    step = max(1, round(src_fps / fps))
    idx = list(range(0, len(frames), step))[:max_frames]
    if len(idx) % 2:  # the ViT patches two frames at a time
        idx = idx + [idx[-1]] if len(idx) < len(frames) else idx[:-1] or idx
    return np.stack([frames[i] for i in idx]), src_fps / step


def _messages(record: dict[str, Any]) -> list[dict[str, Any]]:
    content = [{"type": "image"} for _ in record["images"]] + [{"type": "video"} for _ in record["videos"]]
    content.append({"type": "text", "text": record["prompt"]})
    msgs = [{"role": "user", "content": content}]
    if record.get("system"):
        msgs.insert(0, {"role": "system", "content": record["system"]})
    return msgs


def prepare_batch(processor: Any, records: list[dict[str, Any]], *, video_fps: float = 2.0,
                  max_video_frames: int = 32) -> dict[str, Any]:
    """Chat-template the records and run the processor (left padding, for generation)."""
    from PIL import Image
    from transformers.video_utils import VideoMetadata

    texts = [processor.apply_chat_template(_messages(r), add_generation_prompt=True, tokenize=False)
             for r in records]
    images = [Image.open(p).convert("RGB") for r in records for p in r["images"]]
    videos, metas = [], []
    for r in records:
        for p in r["videos"]:
            frames, rate = _read_video(p, video_fps, max_video_frames)
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


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoProcessor

    from mm_core.generation import GenerationConfig, generate
    from mm_core.nn.pretrained import is_mm_dir, load_pretrained

    model_dir = Path(args.model)
    proc_dir = Path(args.processor) if args.processor else model_dir
    if is_mm_dir(model_dir) and not args.processor:
        raise ConfigError(f"--model {model_dir} is an mm checkpoint: add --processor <the original HF directory>")
    records = _records(args)
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
    try:
        for start in range(0, len(records), args.batch_size):
            chunk = records[start:start + args.batch_size]
            batch = prepare_batch(processor, chunk, video_fps=args.video_fps, max_video_frames=args.max_video_frames)
            batch = {k: v.to(args.device) if hasattr(v, "to") else v for k, v in batch.items()}
            for key in ("pixel_values", "pixel_values_videos"):
                if key in batch:
                    batch[key] = batch[key].to(dtype)
            t1 = time.perf_counter()
            new = generate(model, batch, cfg)
            n_tok = sum(len(t) for t in new)
            print(f"generated {n_tok} tokens in {time.perf_counter() - t1:.2f}s", file=sys.stderr)
            for record, tokens in zip(chunk, new):
                text = processor.tokenizer.decode(tokens, skip_special_tokens=True)
                if as_json:
                    line = json.dumps({**record, "answer": text, "token_ids": tokens}, ensure_ascii=False)
                    print(line) if sink is None else sink.write(line + "\n")
                if not as_json or sink is not None:
                    print(text)
    finally:
        if sink is not None:
            sink.close()
    return 0
