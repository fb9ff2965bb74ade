"""Reload a converted-back HF directory with transformers and check its greedy answers.

    python -m mm_core.demo.hf_check --model DIR --answers answers.jsonl [--limit N] [--output check.json]

``answers.jsonl`` is what `mm-run infer --output` wrote for the same model. Each question is asked
again through ``transformers.Qwen2_5_VLForConditionalGeneration.generate`` (greedy, the same
processor, prompts and stop tokens) and the generated token ids must equal infer's, so a
checkpoint trained with mm and converted back is proven to be a plain HF model. Exit status 1
and the first differences printed when any answer differs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def transformers_answers(model_dir: Path, records: list[dict[str, Any]], *, max_new_tokens: int,
                         batch_size: int = 16) -> list[list[int]]:
    """Greedy token ids from transformers, cut after the first stop token like `mm-run infer`."""
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from mm_core.cli.infer import prepare_batch, stop_token_ids

    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=False)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    stops = set(stop_token_ids(model_dir, processor.tokenizer))
    rows: list[list[int]] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        batch = prepare_batch(processor, chunk)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=processor.tokenizer.pad_token_id)
        for tokens in out[:, batch["input_ids"].shape[1]:].tolist():
            cut = next((i + 1 for i, t in enumerate(tokens) if t in stops), len(tokens))
            rows.append(tokens[:cut])
    return rows


def compare(model_dir: Path, answers: list[dict[str, Any]], *, max_new_tokens: int) -> dict[str, Any]:
    """Ask transformers the questions of ``answers`` and compare token ids with infer's."""
    records = [{"prompt": r["prompt"], "images": r.get("images", []), "videos": r.get("videos", []),
                "system": r.get("system")} for r in answers]
    t0 = time.perf_counter()
    ref = transformers_answers(model_dir, records, max_new_tokens=max_new_tokens)
    mismatches = [{"prompt": r["prompt"], "images": r.get("images", []), "mm_run_infer": r["token_ids"],
                   "transformers": t} for r, t in zip(answers, ref) if r["token_ids"] != t]
    return {"model": str(model_dir), "questions": len(answers), "equal": len(answers) - len(mismatches),
            "mismatches": mismatches[:10], "seconds": time.perf_counter() - t0}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mm_core.demo.hf_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="HF directory (converted back from mm)")
    p.add_argument("--answers", required=True, help="JSONL written by `mm-run infer --output` for this model")
    p.add_argument("--limit", type=int, default=None, help="check only the first N questions")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="default: the longest answer of the answers file (so both stop at the same place)")
    p.add_argument("--output", help="write the result as JSON here")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    answers = [json.loads(line) for line in Path(args.answers).read_text().splitlines() if line.strip()]
    if args.limit is not None:
        answers = answers[:args.limit]
    if not answers:
        print(f"error: {args.answers} holds no answers", file=sys.stderr)
        return 2
    missing = [i for i, r in enumerate(answers) if "token_ids" not in r]
    if missing:
        print(f"error: {args.answers}: records {missing[:5]} have no token_ids (write it with mm-run infer --output)",
              file=sys.stderr)
        return 2
    max_new = args.max_new_tokens or max(1, max(len(r["token_ids"]) for r in answers))
    result = compare(Path(args.model), answers, max_new_tokens=max_new)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1))
    print(f"transformers Qwen2_5_VLForConditionalGeneration from {args.model}: {result['equal']}/{result['questions']} "
          f"greedy answers equal to mm-run infer's ({result['seconds']:.1f}s)")
    for m in result["mismatches"][:3]:
        print(f"  differs: {m['prompt']!r} {m['images']}: mm-run infer {m['mm_run_infer']} vs transformers "
              f"{m['transformers']}", file=sys.stderr)
    return 0 if result["equal"] == result["questions"] else 1


if __name__ == "__main__":
    sys.exit(main())
