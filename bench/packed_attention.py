"""Packed-row attention: mask-free kernels vs the masked reference (CUDA, or CPU with --cpu).

    python bench/packed_attention.py        # bf16, 2 rows of 8192 tokens, 8 samples each, 28/4 heads of 128
    python bench/packed_attention.py --cpu  # fp32, 2 rows of 2048 tokens, 4 samples of mixed length each,
                                            # 8/2 heads of 64 (--threads N: torch threads)

One decoder attention (forward + backward) over rows that pack several samples, as the engine
runs it with ``data.basic_parameters.packing``: the reference keeps samples apart with a dense
``[B, T, T]`` mask; ``mm_core.kernels.cuda`` gathers the real tokens and calls flash varlen.
With ``--cpu``, ``mm_core.kernels.cpu`` (per-sample CPU flash attention) is timed against the
reference on the same packed rows and against padding the same samples one per row (equal
work), the other way a batch can hold them. Prints one line and writes JSON (default
bench/results/packed_attention.json, or packed_attention_cpu.json with --cpu).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
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


def _sample_lengths(rows: int, seq: int, samples: int, seed: int = 0) -> list[list[int]]:
    """Each row's samples: ``seq`` cut at random points (every sample >= 1/8 of an even share)."""
    g = torch.Generator().manual_seed(seed)
    floor = max(1, seq // samples // 8)
    out = []
    for _ in range(rows):
        cuts = sorted(torch.randperm(seq - samples * floor, generator=g)[: samples - 1].tolist())
        bounds = [0, *cuts, seq - samples * floor]
        out.append([bounds[i + 1] - bounds[i] + floor for i in range(samples)])
    return out


def _cpu_time(fn, repeats: int) -> float:
    """Median wall ms of ``fn`` (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main_cpu(args: argparse.Namespace) -> int:
    """Packed rows through the CPU kernel and the reference, and the same samples padded one per row."""
    from mm_core.kernels import cpu, reference

    b, t, h, kv, d = args.rows, args.seq, args.heads, args.kv_heads, args.head_dim
    lengths = _sample_lengths(b, t, args.samples)
    packed = torch.tensor([[i for i, n in enumerate(row) for _ in range(n)] for row in lengths])
    flat = [n for row in lengths for n in row]
    longest = max(flat)
    padded = torch.tensor([[0] * n + [-1] * (longest - n) for n in flat])
    g = torch.Generator().manual_seed(0)

    def inputs(batch: int, seq: int) -> tuple[torch.Tensor, ...]:
        return tuple(torch.randn(batch, n, seq, d, generator=g).requires_grad_() for n in (h, kv, kv))

    def step(kernel, tensors, seg):
        q, k, v = tensors
        grad = torch.randn(q.shape, generator=g) * (seg >= 0)[:, None, :, None]

        def run():
            kernel(q, k, v, causal=True, segment_ids=seg, scale=d**-0.5).backward(grad)
            q.grad = k.grad = v.grad = None
        return run

    packed_in, padded_in = inputs(b, t), inputs(len(flat), longest)
    cases = {"packed_cpu_kernel": step(cpu.attention, packed_in, packed),
             "packed_masked_reference": step(reference.attention, packed_in, packed),
             "padded_masked_reference": step(reference.attention, padded_in, padded),
             "padded_cpu_kernel": step(cpu.attention, padded_in, padded)}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):  # interleaved rounds: a burst of load from elsewhere hits every case alike
        for name, fn in cases.items():
            times[name].append(_cpu_time(fn, repeats=3))
    ms = {name: statistics.median(v) for name, v in times.items()}
    result = {"device": "cpu", "threads": torch.get_num_threads(), "dtype": "float32", "rows": b, "seq": t,
              "sample_lengths": lengths, "padded_rows": len(flat), "padded_seq": longest, "heads": h,
              "kv_heads": kv, "head_dim": d, **{f"{name}_ms": v for name, v in ms.items()},
              "speedup_vs_masked_packed": ms["packed_masked_reference"] / ms["packed_cpu_kernel"],
              "speedup_vs_masked_padded": ms["padded_masked_reference"] / ms["packed_cpu_kernel"],
              "speedup_vs_kernel_padded": ms["padded_cpu_kernel"] / ms["packed_cpu_kernel"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"packed_attention [cpu {result['threads']} threads fp32 {b}x{t} tokens, {args.samples} samples/row, "
          f"{h}/{kv} heads of {d}, fwd+bwd]: cpu kernel {ms['packed_cpu_kernel']:.1f} ms vs masked reference "
          f"{ms['packed_masked_reference']:.1f} ms (x{result['speedup_vs_masked_packed']:.2f}); padded one per row "
          f"({len(flat)}x{longest}): masked reference {ms['padded_masked_reference']:.1f} ms "
          f"(x{result['speedup_vs_masked_padded']:.2f}), cpu kernel {ms['padded_cpu_kernel']:.1f} ms "
          f"(x{result['speedup_vs_kernel_padded']:.2f}) -> {args.out}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="time mm_core.kernels.cpu instead of the CUDA kernel")
    p.add_argument("--rows", type=int, default=2)
    p.add_argument("--seq", type=int, default=None, help="tokens per row (8192 on CUDA, 2048 on CPU)")
    p.add_argument("--samples", type=int, default=None, help="samples packed per row (8 on CUDA, 4 on CPU)")
    p.add_argument("--heads", type=int, default=8, help="query heads (CPU; CUDA uses 28)")
    p.add_argument("--kv-heads", type=int, default=2, help="k/v heads (CPU; CUDA uses 4)")
    p.add_argument("--head-dim", type=int, default=64, help="(CPU; CUDA uses 128)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU; default: torch's)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    name = "packed_attention_cpu" if args.cpu else "packed_attention"
    args.out = args.out or str(HERE / "results" / f"{name}.json")
    args.seq = args.seq or (2048 if args.cpu else 8192)
    args.samples = args.samples or (4 if args.cpu else 8)
    if args.cpu:
        if args.threads:
            torch.set_num_threads(args.threads)
        return main_cpu(args)
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
