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

Tensor parallel: ``--nproc-per-node N`` (or ``--tp N``, which starts N processes) shards the model
over N processes with the family's DTensor plan (derived from its converter rules); each rank
loads only its shard of the HF or mm checkpoint, all ranks generate together and rank 0 prints or
writes the answers. A tp size the model's heads do not allow is refused before anything starts.
``torchrun --nproc-per-node N -m mm_core.cli.infer ...`` works too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mm_core.cli.infer_batch import prepare_batch, stop_token_ids
from mm_core.cli.infer_inputs import Item, ItemError, Media, load_media, read_items
from mm_core.cli.infer_model import DTYPES, check_model, load_model
from mm_core.cli.infer_thinking import answer_fields, decode_reply, display_text
from mm_core.cli.launcher import add_launcher_arguments, split_launcher_args, wants_workers
from mm_core.cli.launcher import launch as launch_workers
from mm_core.cli.launcher import world_size as launched_world
from mm_core.errors import ConfigError, MMError

PROG = "mm-run infer"
WORKER_MODULE = "mm_core.cli.infer"
__all__ = ["add_arguments", "main", "prepare_batch", "run", "stop_token_ids"]


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
    p.add_argument("--lora", help="LoRA adapters directory (<save>/iter_N/lora) to apply on top of --model")
    p.add_argument("--no-check-base", action="store_true",
                   help="--lora: skip the check that --model is the base the adapters were trained on")
    p.add_argument("--tp", type=int, default=None, help="tensor-parallel size (default: the number of processes; "
                                                        "alone, it starts that many)")
    add_launcher_arguments(p.add_argument_group("launcher (torchrun)"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="generate answers for images, videos and prompts")
    add_arguments(p)
    return p


def main(argv: Sequence[str]) -> int:
    """Answer in this process, or check the model and start the tensor-parallel workers."""
    argv = list(argv)
    args = _parser().parse_args(argv)
    launch, rest = split_launcher_args(argv, PROG)
    if "WORLD_SIZE" in os.environ:  # a worker already (torchrun -m mm_core.cli.infer)
        return run(args)
    if args.tp is not None and args.tp > 1 and not wants_workers(launch):
        launch.nproc = args.tp  # --tp N alone: one process per shard
    if not wants_workers(launch):
        return run(args)
    check_model(args, launched_world(launch))
    read_items(args.input, args.prompt, args.image, args.video, args.system)  # a missing --input fails here
    return launch_workers(WORKER_MODULE, rest, launch)


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
    """Answer every item (all ranks of a tp group run this; rank 0 prints and writes)."""
    import torch

    from mm_core.cli.infer_model import model_source
    from mm_core.data.hf_processor import load_processor
    from mm_core.generation import GenerationConfig, generate

    src = model_source(args)
    items = read_items(args.input, args.prompt, args.image, args.video, args.system)
    try:
        processor = load_processor(str(src.proc_dir))  # AutoProcessor, or the family's (ModelSpec.processor)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{src.proc_dir}: no usable tokenizer/processor files ({e}); pass --processor "
                          "<the HF directory the model came from>") from e
    dtype = getattr(torch, DTYPES[args.dtype])
    loaded = load_model(args)
    model, device, main_rank = loaded.model, loaded.device, loaded.is_main
    if args.lora:
        from mm_core.cli.infer_lora import attach_adapters

        attach_adapters(model, args.lora, src.model_dir, mm=src.mm, check_base=not args.no_check_base)
    gen_dir = src.gen_dir
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                           temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                           stop_token_ids=stop_token_ids(gen_dir, processor.tokenizer), seed=args.seed)
    as_json = bool(args.input or args.output)
    if args.output and main_rank:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    sink = open(args.output, "w") if args.output and main_rank else None  # noqa: SIM115 - closed below

    def emit(line: str) -> None:
        print(line) if sink is None else sink.write(line + "\n")

    def say(line: str, err: bool = False) -> None:  # only the main rank speaks
        if main_rank:
            print(line, file=sys.stderr if err else sys.stdout)

    failed = 0
    try:
        for start in range(0, len(items), args.batch_size):
            chunk = items[start:start + args.batch_size]
            good, media = _answerable(chunk, args)
            answers: dict[int, tuple[str, list[int]]] = {}
            if good:
                batch = prepare_batch(processor, [i.record for i in good], media=media)
                batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
                for key in ("pixel_values", "pixel_values_videos"):
                    if key in batch:
                        batch[key] = batch[key].to(dtype)
                t1 = time.perf_counter()
                new = generate(model, batch, cfg, tp_group=loaded.tp_group)
                say(f"generated {sum(len(t) for t in new)} tokens in {time.perf_counter() - t1:.2f}s", err=True)
                answers = {id(i): (decode_reply(processor.tokenizer, t), t) for i, t in zip(good, new)}
            for item in chunk:  # in input order, failures included
                if item.error is not None:
                    failed += 1
                    say(f"mm-run infer: error: {item.error}", err=True)
                    if as_json and main_rank:
                        emit(json.dumps({**item.record, "error": item.error}, ensure_ascii=False))
                    continue
                text, tokens = answers[id(item)]
                if as_json and main_rank:
                    emit(json.dumps({**item.record, **answer_fields(text), "token_ids": tokens}, ensure_ascii=False))
                if not as_json or sink is not None:
                    say(display_text(text))
    finally:
        if sink is not None:
            sink.close()
    if failed:
        say(f"mm-run infer: {failed} of {len(items)} item(s) failed (see the errors above)", err=True)
    return 1 if failed else 0


def worker_main(argv: Sequence[str] | None = None) -> int:
    """What each launched process runs: errors are printed once (by rank 0), without a traceback."""
    from mm_core.engine.mesh import shutdown

    finished = False
    try:
        rc = run(_parser().parse_args(list(sys.argv[1:] if argv is None else argv)))
        finished = True
        return rc
    except MMError as e:
        if os.environ.get("MM_TRACEBACK"):
            raise
        if os.environ.get("RANK", "0") == "0":
            print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    finally:
        shutdown(finished)


if __name__ == "__main__":
    sys.exit(worker_main())
