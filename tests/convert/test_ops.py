"""Each op and its inverse, and the streaming safetensors file format."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from mm_core.checkpoint.errors import ConfigError
from mm_core.checkpoint.ops import (
    COLUMN,
    GATED_COLUMN,
    REPLICATED,
    ROW,
    VOCAB,
    Concat,
    GroupInterleave,
    HeadInterleave,
    Split,
)
from mm_core.checkpoint.safetensors_io import SafetensorsError, StreamingWriter, read_header, read_tensor


@pytest.mark.parametrize("trailing", [(), (6,)])
def test_group_interleave_layout_and_inverse(trailing):
    groups, q_rows, kv_rows = 2, 4, 2  # 4 heads of 2 rows, 2 kv heads
    q = torch.arange(8 * (trailing[0] if trailing else 1), dtype=torch.float32).reshape(8, *trailing)
    k, v = q[:4] + 100, q[:4] + 200
    op = GroupInterleave(groups, q_rows, kv_rows)
    fused = op.forward([q, k, v])
    expected = torch.cat([q[:4], k[:2], v[:2], q[4:], k[2:], v[2:]])
    assert torch.equal(fused, expected)
    assert all(torch.equal(a, b) for a, b in zip(op.inverse(fused), [q, k, v]))


def test_head_interleave_layout_and_inverse():
    heads, hd = 3, 2
    w = torch.randn(3 * heads * hd, 5)
    op = HeadInterleave(heads, hd)
    out = op.forward([w])
    q, k, v = w.chunk(3)
    assert torch.equal(out[:6], torch.cat([q[:2], k[:2], v[:2]]))
    assert torch.equal(out[6:12], torch.cat([q[2:4], k[2:4], v[2:4]]))
    assert torch.equal(op.inverse(out)[0], w)


def test_concat_inverse():
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    op = Concat(2)
    assert all(torch.equal(x, y) for x, y in zip(op.inverse(op.forward([a, b])), [a, b]))


@pytest.mark.parametrize("split,shape", [(COLUMN, (8, 3)), (ROW, (3, 8)), (GATED_COLUMN, (8, 3)), (REPLICATED, (4,)),
                                         (Split(dim=0, unit=3, what="heads"), (12, 2))])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_split_merge_inverse(split, shape, tp):
    t = torch.randn(*shape)
    pieces = split.split(t, tp)
    assert len(pieces) == tp
    assert torch.equal(split.merge(pieces), t)


def test_gated_column_gives_each_rank_its_gate_and_up_halves():
    gate, up = torch.arange(4.0), torch.arange(4.0) + 10
    r0, r1 = GATED_COLUMN.split(torch.cat([gate, up]), 2)
    assert torch.equal(r0, torch.tensor([0.0, 1, 10, 11])) and torch.equal(r1, torch.tensor([2.0, 3, 12, 13]))


def test_uneven_vocab_split_first_ranks_take_one_more():
    t = torch.arange(151674 % 1000 + 2.0).reshape(-1, 1)  # 676 rows over 4 ranks: 169 each -> use 677
    t = torch.arange(677.0).reshape(-1, 1)
    pieces = VOCAB.split(t, 4)
    assert [p.shape[0] for p in pieces] == [170, 169, 169, 169]
    assert torch.equal(VOCAB.merge(pieces), t)
    assert VOCAB.rows_of_rank(677, 4, 1) == (170, 339)
    with pytest.raises(ConfigError, match="cannot be split evenly over tp_size 4"):
        COLUMN.sizes((677, 1), 4, "w")


def test_split_errors_name_the_key_and_unit():
    with pytest.raises(ConfigError, match=r"qkv: 3 num_key_value_heads cannot be split evenly over tp_size 2"):
        Split(dim=0, unit=4, what="num_key_value_heads").sizes((12, 8), 2, "qkv")


def test_streaming_writer_any_order_is_valid_safetensors(tmp_path):
    tensors = {"b": torch.randn(3, 4).to(torch.bfloat16), "a": torch.arange(5, dtype=torch.int64),
               "s": torch.tensor(2.5), "e": torch.zeros(0, 3)}
    path = tmp_path / "x.safetensors"
    w = StreamingWriter(path, {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}, {"format": "pt"})
    for k in ["s", "e", "a", "b"]:
        w.write(k, tensors[k])
    assert not path.exists()  # only the partial file until closed
    w.close()
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"format": "pt"}
        for k, v in tensors.items():
            assert torch.equal(f.get_tensor(k), v) and f.get_tensor(k).dtype == v.dtype
    infos, _ = read_header(path)
    assert torch.equal(read_tensor(infos["b"], rows=(1, 3)), tensors["b"][1:3])


def test_streaming_writer_refuses_incomplete_and_wrong(tmp_path):
    w = StreamingWriter(tmp_path / "y.safetensors", {"a": ((2,), torch.float32), "b": ((1,), torch.float32)})
    with pytest.raises(SafetensorsError, match="planned"):
        w.write("a", torch.zeros(3))
    w.write("a", torch.zeros(2))
    with pytest.raises(SafetensorsError, match=r"never written, e.g. \['b'\]"):
        w.close()
    assert not (tmp_path / "y.safetensors").exists()
