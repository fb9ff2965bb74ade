"""Packed-row attention on CUDA: the flash variable-length kernel vs the masked reference.

    python bench/packed_attention.py        # bf16, 2 rows of 8192 tokens, 8 samples each, 28/4 heads of 128

One decoder attention (forward + backward) over rows that pack several samples, as the engine
runs it with ``data.basic_parameters.packing``: the reference keeps samples apart with a dense
``[B, T, T]`` mask; ``mm_core.kernels.cuda`` gathers the real tokens and calls flash varlen.
Prints one line and writes JSON (default bench/results/packed_attention.json). Needs CUDA.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _time(fn, repeats: int = 10) -> tuple[float, float]:
    """(median ms, peak MB above the start) of ``fn`` on the GPU."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2], (torch.cuda.max_memory_allocated() - base) / 2**20


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=2)
    p.add_argument("--seq", type=int, default=8192)
    p.add_argument("--samples", type=int, default=8, help="samples packed per row")
    p.add_argument("--out", default=str(HERE / "results" / "packed_attention.json"))
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("packed_attention: no CUDA device visible")
        return 1
    from mm_core.kernels import cuda, reference

    g = torch.Generator(device="cuda").manual_seed(0)
    b, t, h, kv, d = args.rows, args.seq, 28, 4, 128
    seg = (torch.arange(t, device="cuda") * args.samples // t).expand(b, t).clone()
    q, k, v = (torch.randn(b, n, t, d, device="cuda", generator=g, dtype=torch.bfloat16).requires_grad_()
               for n in (h, kv, kv))
    grad = torch.randn(b, h, t, d, device="cuda", generator=g, dtype=torch.bfloat16)

    def step(kernel):
        def run():
            out = kernel(q, k, v, causal=True, segment_ids=seg)
            out.backward(grad)
            q.grad = k.grad = v.grad = None
        return run

    ours_ms, ours_mb = _time(step(cuda.attention))
    ref_ms, ref_mb = _time(step(reference.attention))
    result = {"device": torch.cuda.get_device_name(), "rows": b, "seq": t, "samples_per_row": args.samples,
              "heads": h, "kv_heads": kv, "head_dim": d, "flash_varlen_ms": ours_ms, "masked_reference_ms": ref_ms,
              "speedup": ref_ms / ours_ms, "flash_varlen_peak_mb": ours_mb, "masked_reference_peak_mb": ref_mb}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"packed_attention [{result['device']} bf16 {b}x{t} tokens, {args.samples} samples/row, fwd+bwd]: "
          f"flash varlen {ours_ms:.2f} ms, {ours_mb:.0f} MB vs masked reference {ref_ms:.2f} ms, {ref_mb:.0f} MB "
          f"(x{result['speedup']:.2f}) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
