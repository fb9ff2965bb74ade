"""Kernel registry dispatch and the reference kernels against straightforward formulas."""

from __future__ import annotations

import math
import types

import pytest
import torch

from mm_core import hookimpl
from mm_core.errors import UnknownKeyError
from mm_core.kernels import get_kernel, reference
from mm_core.kernels.registry import clear_kernel_cache
from mm_core.plugins import PluginManager, reset_plugin_manager
from mm_core.specs import KernelSpec


def _fast(*_a, **_k):
    return "fast"


def _faster(*_a, **_k):
    return "faster"


def _broken(*_a, **_k):
    return "broken"


@pytest.fixture()
def install():
    """Install in-process kernel plugins as the process-wide manager; restore afterwards."""

    def _install(*specs: KernelSpec) -> None:
        plugin = types.SimpleNamespace(mm_register_kernels=hookimpl(lambda register: [register(s) for s in specs]))
        reset_plugin_manager(PluginManager([("kern", plugin)], entry_points_=False))
        clear_kernel_cache()

    yield _install
    reset_plugin_manager(None)
    clear_kernel_cache()


def test_dispatch_by_device_with_fallback_to_reference(install):
    install(KernelSpec("rms_norm", "cuda", "fast", _fast, priority=10))
    assert get_kernel("rms_norm", "cuda") is _fast
    assert get_kernel("rms_norm", "cpu") is reference.rms_norm  # no cpu kernel: the reference
    assert get_kernel("swiglu", "cuda") is reference.swiglu  # no cuda swiglu: the reference


def test_higher_priority_available_kernel_wins_and_unavailable_is_skipped(install):
    def unavailable() -> bool:
        return False

    def raising() -> bool:
        raise ImportError("no such accelerator library")

    install(
        KernelSpec("attention", "cuda", "fast", _fast, priority=10),
        KernelSpec("attention", "cuda", "faster", _faster, priority=20),
        KernelSpec("attention", "cuda", "broken", _broken, priority=99, is_available=unavailable),
        KernelSpec("rotary", "cuda", "broken", _broken, priority=99, is_available=raising),
    )
    assert get_kernel("attention", "cuda") is _faster
    assert get_kernel("rotary", "cuda") is reference.rotary


def test_availability_is_checked_only_for_the_asked_device(install):
    calls = []

    def check() -> bool:
        calls.append(1)
        return True

    install(KernelSpec("swiglu", "npu", "fused", _fast, priority=5, is_available=check))
    assert get_kernel("swiglu", "cpu") is reference.swiglu
    assert calls == []
    assert get_kernel("swiglu", "npu") is _fast and calls == [1]


def test_unknown_op_is_an_error(install):
    install()
    with pytest.raises(UnknownKeyError, match="no kernel 'flash_mla'"):
        get_kernel("flash_mla", "cpu")


# -- reference kernels vs formulas -------------------------------------------------------------------


def test_rms_norm_formula():
    torch.manual_seed(0)
    x, w = torch.randn(3, 5, 16), torch.randn(16)
    expected = w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(reference.rms_norm(x, w, 1e-5), expected)
    out = reference.rms_norm(x.bfloat16(), w.bfloat16(), 1e-5)
    assert out.dtype == torch.bfloat16


def test_swiglu_formula():
    torch.manual_seed(0)
    gate, up = torch.randn(4, 7), torch.randn(4, 7)
    expected = gate / (1 + torch.exp(-gate)) * up
    torch.testing.assert_close(reference.swiglu(torch.cat([gate, up], -1)), expected)


def _rotate_pairs(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate channel i with channel i + d/2 by ``angles[..., i]`` (the rotate-half convention)."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    c, s = torch.cos(angles), torch.sin(angles)
    return torch.cat([a * c - b * s, a * s + b * c], -1)


def test_rotary_1d_formula_and_partial_rotary():
    torch.manual_seed(0)
    dim, theta, T = 8, 10000.0, 6
    x = torch.randn(2, 3, T, 12)  # 12 channels, rotate only the first 8
    pos = torch.arange(T)
    cos, sin = reference.rotary_cos_sin(pos, dim, theta)
    inv = torch.tensor([theta ** (-2 * i / dim) for i in range(dim // 2)])
    angles = pos[:, None].float() * inv
    out = reference.rotary(x, cos, sin)
    torch.testing.assert_close(out[..., :dim], _rotate_pairs(x[..., :dim], angles))
    torch.testing.assert_close(out[..., dim:], x[..., dim:])
    # relative property: <rot(q, m), rot(k, n)> depends only on m - n
    q, k = torch.randn(dim), torch.randn(dim)
    def dot(m: int, n: int) -> torch.Tensor:
        c, s = reference.rotary_cos_sin(torch.tensor([m, n]), dim, theta)
        return (reference.rotary(q[None], c[:1], s[:1]) * reference.rotary(k[None], c[1:], s[1:])).sum()
    torch.testing.assert_close(dot(5, 2), dot(13, 10))


def test_mrope_sections_take_their_angle_from_their_axis():
    dim, theta, sections = 16, 1e6, [2, 3, 3]
    pos = torch.stack([torch.tensor([[0, 7, 9]]), torch.tensor([[1, 4, 2]]), torch.tensor([[5, 3, 8]])])  # [3,1,3]
    cos, sin = reference.mrope_cos_sin(pos, dim, theta, sections)
    assert cos.shape == (1, 3, dim)
    inv = torch.tensor([theta ** (-2 * i / dim) for i in range(dim // 2)])
    axis = torch.tensor([0] * 2 + [1] * 3 + [2] * 3)  # frequency i -> position axis
    angles = pos[axis, 0].T.float() * inv  # [3 tokens, 8]
    torch.testing.assert_close(cos[0], torch.cat([angles, angles], -1).cos())
    torch.testing.assert_close(sin[0], torch.cat([angles, angles], -1).sin())
    # equal axes reduce to 1-D rotary
    same = torch.tensor([[0, 7, 9]]).expand(3, 1, 3)
    c3, _ = reference.mrope_cos_sin(same, dim, theta, sections)
    c1, _ = reference.rotary_cos_sin(same[0], dim, theta)
    torch.testing.assert_close(c3, c1)


def _naive_attention(q, k, v, causal: bool, scale: float) -> torch.Tensor:
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = q @ k.transpose(-1, -2) * scale
    if causal:
        tq, tk = q.shape[2], k.shape[2]
        scores = scores.masked_fill(~torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq), float("-inf"))
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("causal", [True, False])
def test_packed_attention_equals_each_segment_alone(causal):
    torch.manual_seed(0)
    lengths = [3, 5, 4]
    T, D = sum(lengths) + 2, 8
    q, k, v = torch.randn(1, 4, T, D), torch.randn(1, 2, T, D), torch.randn(1, 2, T, D)  # GQA 4 q / 2 kv heads
    seg = torch.tensor([[0] * 3 + [1] * 5 + [2] * 4 + [-1] * 2])
    out = reference.attention(q, k, v, causal=causal, segment_ids=seg, scale=D**-0.5)
    start = 0
    for n in lengths:
        sl = slice(start, start + n)
        alone = _naive_attention(q[:, :, sl], k[:, :, sl], v[:, :, sl], causal, D**-0.5)
        torch.testing.assert_close(out[:, :, sl], alone)
        start += n
    assert torch.isfinite(out).all()  # padding rows do not produce NaN


def test_attention_without_segments_and_with_cache_offset():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    torch.testing.assert_close(reference.attention(q, k, v, causal=True, scale=None),
                               _naive_attention(q, k, v, True, 1 / math.sqrt(8)))
    # one new query over 6 cached keys, left padding masked by segment id -1
    seg = torch.tensor([[-1, -1, 0, 0, 0, 0], [0] * 6])
    out = reference.attention(q[:, :, -1:], k, v, causal=True, segment_ids=seg)
    torch.testing.assert_close(out[0], _naive_attention(q[:1, :, -1:], k[:1, :, 2:], v[:1, :, 2:], True, 8**-0.5)[0])
    torch.testing.assert_close(out[1], _naive_attention(q[1:, :, -1:], k[1:], v[1:], True, 8**-0.5)[0])


def test_varlen_layout_of_packed_rows_and_padded_windows():
    """The CUDA flash kernel's token gather and sample offsets, checked here on the CPU."""
    from mm_core.kernels.cuda import cached_segments_to_varlen, segments_to_varlen

    # two packed rows (samples of 3, 2 and 1 tokens, then 2 and 4), padding at the ends
    seg = torch.tensor([[0, 0, 0, 1, 1, 2, -1, -1],
                        [0, 0, 1, 1, 1, 1, -1, -1]])
    index, cu, longest = segments_to_varlen(seg)
    assert index.tolist() == [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13]
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 3, 5, 6, 8, 12]
    assert longest == 4
    # the same sample number in two rows is two samples; vision windows: one sample per row
    windows = torch.tensor([[0, 0, 0], [0, 0, -1], [0, -1, -1]])
    index, cu, longest = segments_to_varlen(windows)
    assert index.tolist() == [0, 1, 2, 3, 4, 6] and cu.tolist() == [0, 3, 5, 6] and longest == 3
    # all padding: nothing to attend
    index, cu, longest = segments_to_varlen(torch.full((2, 3), -1))
    assert index.numel() == 0 and cu.tolist() == [0] and longest == 0
    # every layer of a forward reuses the layout of one segment tensor; a changed tensor is redone
    first = cached_segments_to_varlen(seg)
    assert cached_segments_to_varlen(seg) is first
    seg[1, 6] = 1
    assert cached_segments_to_varlen(seg)[1].tolist() == [0, 3, 5, 6, 8, 13]


def test_varlen_layout_runs_eagerly_inside_compiled_code():
    """Compiled layers call the layout helper: it must run as plain Python there (its cache and
    host syncs), giving the same answer as outside."""
    from mm_core.kernels.cuda import cached_segments_to_varlen

    seg = torch.tensor([[0, 0, 1, 1, 1, -1]])

    def offsets(s: torch.Tensor) -> torch.Tensor:
        index, cu, longest = cached_segments_to_varlen(s)
        return cu * longest + index.sum()

    compiled = torch.compile(offsets, backend="aot_eager")
    assert torch.equal(compiled(seg), offsets(seg))
