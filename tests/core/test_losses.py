"""Loss types (data-and-loss.md): each one's defining property, and chunked == full cross entropy.

A global batch of samples of different lengths is cut into data-parallel ranks x accumulation
steps x micro-batches; the step objective is what the engine optimises: the mean over ranks and
accumulation steps of ``sum(w * ce) / D`` (D from the loss type's normalisation rule).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mm_core.engine.loss import denominators
from mm_core.losses.cross_entropy import sample_ids_for, shift_labels, weighted_ce_sum
from mm_core.plugins import PluginManager

H, V = 8, 11
LOSSES = {s.name: s for s in PluginManager(entry_points_=False).losses}


def _samples(n: int = 8, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = 3 + 5 * (i % 3) + int(torch.randint(0, 3, (1,), generator=g))  # lengths differ a lot
        labels = torch.randint(0, V, (length,), generator=g)
        labels[0] = -100
        labels[1: 1 + i % 2] = -100  # some prompt tokens
        out.append({"hidden": torch.randn(length, H, generator=g), "labels": labels})
    return out


def _collate(samples: list[dict]) -> dict:
    t = max(len(s["labels"]) for s in samples)
    hidden = torch.zeros(len(samples), t, H)
    labels = torch.full((len(samples), t), -100)
    seg = torch.full((len(samples), t), -1)
    for r, s in enumerate(samples):
        n = len(s["labels"])
        hidden[r, :n], labels[r, :n], seg[r, :n] = s["hidden"], s["labels"], 0
    return {"hidden": hidden, "labels": labels, "segment_ids": seg}


def _objective(samples: list[dict], weight: torch.Tensor, loss: str, dp: int, ga: int) -> torch.Tensor:
    """Mean over ranks and accumulation steps of the micro-batch losses (contiguous cuts)."""
    spec = LOSSES[loss]
    per_rank = len(samples) // dp
    mbs = per_rank // ga
    prepared = []  # [rank][step] -> (hidden, targets, weights)
    for r in range(dp):
        row = []
        for i in range(ga):
            b = _collate(samples[r * per_rank + i * mbs: r * per_rank + (i + 1) * mbs])
            targets = shift_labels(b["labels"])
            valid = (targets != -100) & (b["segment_ids"] >= 0)
            w = spec.token_weights(valid, sample_ids_for(targets, b["segment_ids"])).float()
            row.append((b["hidden"], targets, w))
        prepared.append(row)
    sums = torch.tensor([[float(w.sum()) for _, _, w in row] for row in prepared], dtype=torch.float64)
    total = torch.zeros(())
    for r, row in enumerate(prepared):
        denoms = denominators(spec.normalize, sums[r], sums.mean(0))
        for (hidden, targets, w), d in zip(row, denoms):
            total = total + weighted_ce_sum(hidden, weight, targets, w) / d / ga
    return total / dp


CUTS = [(1, 1), (2, 2), (4, 1), (1, 8), (2, 4)]  # (dp, ga) over 8 samples


def _all_cuts(loss: str) -> list[tuple[float, torch.Tensor]]:
    samples = _samples()
    results = []
    for dp, ga in CUTS:
        w = torch.randn(V, H, generator=torch.Generator().manual_seed(1)).requires_grad_()
        obj = _objective(samples, w, loss, dp, ga)
        obj.backward()
        results.append((float(obj.detach()), w.grad.clone()))
    return results


def _global_token_mean(samples: list[dict], weight: torch.Tensor) -> float:
    ce = [F.cross_entropy(s["hidden"] @ weight.t(), shift_labels(s["labels"]), reduction="none",
                          ignore_index=-100) for s in samples]
    n = sum(int((shift_labels(s["labels"]) != -100).sum()) for s in samples)
    return float(sum(c.sum() for c in ce) / n)


def test_per_token_loss_is_invariant_to_how_the_global_batch_is_cut():
    results = _all_cuts("per_token_loss")
    weight = torch.randn(V, H, generator=torch.Generator().manual_seed(1))
    expected = _global_token_mean(_samples(), weight)
    for (value, grad), cut in zip(results, CUTS):
        assert value == pytest.approx(expected, rel=1e-5), cut
        torch.testing.assert_close(grad, results[0][1], rtol=1e-5, atol=1e-7, msg=str(cut))


def test_default_is_the_token_mean_per_micro_batch_and_not_invariant():
    samples = _samples()
    weight = torch.randn(V, H, generator=torch.Generator().manual_seed(1))
    per_sample = [_global_token_mean([s], weight) for s in samples]
    # one sample per micro-batch: the mean of per-sample means (short samples weigh more) ...
    assert _objective(samples, weight, "default", 1, 8).item() == pytest.approx(sum(per_sample) / 8, rel=1e-5)
    # ... one micro-batch: the global token mean; the known trap is that these differ
    assert _objective(samples, weight, "default", 1, 1).item() == pytest.approx(_global_token_mean(samples, weight),
                                                                                rel=1e-5)
    values = [v for v, _ in _all_cuts("default")]
    assert max(values) - min(values) > 1e-3


def test_per_sample_loss_is_the_mean_of_per_sample_means_for_every_cut():
    samples = _samples()
    weight = torch.randn(V, H, generator=torch.Generator().manual_seed(1))
    expected = sum(_global_token_mean([s], weight) for s in samples) / len(samples)
    for value, _ in _all_cuts("per_sample_loss"):
        assert value == pytest.approx(expected, rel=1e-5)


def test_per_sample_loss_counts_packed_samples_separately():
    samples = _samples(3)
    weight = torch.randn(V, H, generator=torch.Generator().manual_seed(1))
    hidden = torch.cat([s["hidden"] for s in samples])[None]
    labels = torch.cat([s["labels"] for s in samples])[None]
    seg = torch.cat([torch.full((len(s["labels"]),), i) for i, s in enumerate(samples)])[None]
    targets = shift_labels(labels)
    # the last token of a packed sample must not predict the next sample's first token (-100 anyway)
    w = LOSSES["per_sample_loss"].token_weights(targets != -100, sample_ids_for(targets, seg))
    value = weighted_ce_sum(hidden, weight, targets, w)
    expected = sum(_global_token_mean([s], weight) for s in samples) / 3
    assert float(value) == pytest.approx(expected, rel=1e-5)


def test_token_loss_divides_by_the_mean_token_count_over_ranks():
    samples = _samples()
    weight = torch.randn(V, H, generator=torch.Generator().manual_seed(1))
    # within one accumulation step, splitting the micro-batch over ranks changes nothing
    one = _objective(samples, weight, "token_loss", 1, 1)
    assert _objective(samples, weight, "token_loss", 2, 1).item() == pytest.approx(one.item(), rel=1e-5)
    assert _objective(samples, weight, "token_loss", 4, 1).item() == pytest.approx(one.item(), rel=1e-5)
    # across accumulation steps it averages step means: each step is normalised by its own tokens
    halves = [_global_token_mean(samples[:4], weight), _global_token_mean(samples[4:], weight)]
    assert _objective(samples, weight, "token_loss", 1, 2).item() == pytest.approx(sum(halves) / 2, rel=1e-5)


def test_square_loss_weights_tokens_by_inverse_sqrt_sample_length():
    samples = _samples()
    weight = torch.randn(V, H, generator=torch.Generator().manual_seed(1))
    num, den = 0.0, 0.0
    for s in samples:
        t = shift_labels(s["labels"])
        n = int((t != -100).sum())
        ce = F.cross_entropy(s["hidden"] @ weight.t(), t, reduction="sum", ignore_index=-100)
        num += float(ce) / n ** 0.5
        den += n / n ** 0.5
    assert _objective(samples, weight, "square_loss", 1, 1).item() == pytest.approx(num / den, rel=1e-5)
    assert _objective(samples, weight, "square_loss", 4, 1).item() == pytest.approx(num / den, rel=1e-5)


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_chunked_cross_entropy_equals_full(dtype, rtol):
    g = torch.Generator().manual_seed(0)
    n, h, v = 300, 16, 997
    hidden = torch.randn(n, h, generator=g, dtype=dtype)
    head = torch.randn(v, h, generator=g, dtype=dtype) * 0.3
    targets = torch.randint(0, v, (n,), generator=g)
    targets[::5] = -100
    weights = torch.rand(n, generator=g, dtype=dtype)
    results = []
    for mode, chunk in (("default", 0), ("chunk", 64), ("chunk", 7), ("dynamic_chunk", 0)):
        hh, ww = hidden.clone().requires_grad_(), head.clone().requires_grad_()
        loss = weighted_ce_sum(hh, ww, targets, weights, compute_mode=mode, chunk_size=chunk or 1)
        (loss * 0.37).backward()
        results.append((loss.detach(), hh.grad, ww.grad))
    for loss, gh, gw in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=rtol, atol=0)
        torch.testing.assert_close(gh, results[0][1], rtol=max(rtol, 1e-4) if dtype == torch.float32 else rtol,
                                   atol=1e-6 if dtype == torch.float32 else 1e-12)
        torch.testing.assert_close(gw, results[0][2], rtol=max(rtol, 1e-4) if dtype == torch.float32 else rtol,
                                   atol=1e-6 if dtype == torch.float32 else 1e-12)


def test_chunked_cross_entropy_under_autocast_matches_the_full_low_precision_loss(monkeypatch):
    """fp32 master weights under bf16 autocast: the head's matmuls run in bf16 (like the full mode),
    gradients keep the inputs' fp32 dtype and agree with the full mode's."""
    import mm_core.losses.cross_entropy as ce

    g = torch.Generator().manual_seed(1)
    n, h, v = 200, 32, 501
    hidden = torch.randn(n, h, generator=g)
    head = torch.randn(v, h, generator=g) * 0.3
    targets = torch.randint(0, v, (n,), generator=g)
    weights = torch.rand(n, generator=g)
    low_precision_mm = []
    real = ce.add_matmul_

    def spy(out, a, b):
        low_precision_mm.append(a.dtype)
        return real(out, a, b)

    monkeypatch.setattr(ce, "add_matmul_", spy)
    results = {}
    for mode in ("default", "chunk"):
        hh, ww = hidden.clone().requires_grad_(), head.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = weighted_ce_sum(hh, ww, targets, weights, compute_mode=mode, chunk_size=64)
        loss.backward()
        assert hh.grad.dtype == ww.grad.dtype == torch.float32
        results[mode] = (loss.detach(), hh.grad, ww.grad)
    assert low_precision_mm and set(low_precision_mm) == {torch.bfloat16}
    fp32 = weighted_ce_sum(hidden, head, targets, weights)
    full, chunk = results["default"], results["chunk"]
    torch.testing.assert_close(chunk[0], full[0], rtol=1e-3, atol=0)
    assert chunk[0].item() != pytest.approx(fp32.item(), rel=1e-6), "autocast was ignored: fp32 result"
    for a, b in zip(chunk[1:], full[1:]):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)


def test_chunked_cross_entropy_never_keeps_full_logits():
    n, h, v, chunk = 256, 8, 512, 32
    hidden = torch.randn(n, h, requires_grad=True)
    head = torch.randn(v, h, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    saved: list[int] = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        weighted_ce_sum(hidden, head, targets, torch.ones(n), compute_mode="chunk", chunk_size=chunk)
    assert saved and max(saved) < n * v  # only [N, H] and [V, H] gradients are kept, never [N, V]
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        weighted_ce_sum(hidden, head, targets, torch.ones(n), compute_mode="default")
    assert max(saved) >= n * v  # the full mode does keep the logits (the test can tell the difference)


def test_all_five_loss_types_are_registered():
    assert {"default", "per_sample_loss", "per_token_loss", "token_loss", "square_loss"} <= set(LOSSES)
