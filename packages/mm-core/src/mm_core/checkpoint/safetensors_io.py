"""Streaming safetensors I/O: read one tensor (or a run of rows) with a plain file read, and write
files whose header is computed up front so tensors can be written in any order as they are made.

The `safetensors` package reads through mmap and writes whole dicts at once; a conversion must
hold only a few tensors at a time and should not grow the process's resident memory with mapped
pages, so this module works on the (simple, documented) file format directly:
``u64 header length | JSON header {name: {dtype, shape, data_offsets}} | raw little-endian bytes``.
Files written here are checked against the `safetensors` package in the tests.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mm_core.checkpoint.rowcopy import FdCache, copy_segments
from mm_core.errors import MMError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(MMError):
    """A safetensors file is malformed or does not hold what was asked."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in a safetensors file."""

    path: Path
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute file offset of the first byte
    nbytes: int

    def meta(self) -> torch.Tensor:
        """A meta tensor with this shape and dtype (to compute output shapes without data)."""
        return torch.empty(self.shape, dtype=self.dtype, device="meta")


def read_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """The tensors of a safetensors file (by name) and its ``__metadata__``."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SafetensorsError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER:
            raise SafetensorsError(f"{path}: header of {n} bytes is not plausible; the file is not safetensors")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise SafetensorsError(f"{path}: unreadable header ({e})") from e
    base = 8 + n
    meta = header.pop("__metadata__", None) or {}
    infos: dict[str, TensorInfo] = {}
    for name, h in header.items():
        if h["dtype"] not in DTYPES:
            raise SafetensorsError(f"{path}: tensor {name} has dtype {h['dtype']}, which torch cannot hold")
        b, e = h["data_offsets"]
        infos[name] = TensorInfo(path, name, DTYPES[h["dtype"]], tuple(h["shape"]), base + b, e - b)
    return infos, meta


def _readinto(path: Path, start: int, buf: torch.Tensor) -> None:
    view = memoryview(buf.numpy()).cast("B")
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        got = 0
        while got < len(view):
            n = f.readinto(view[got:])
            if not n:
                raise SafetensorsError(f"{path}: file ends before the tensor data does (truncated copy?)")
            got += n


def read_tensor(info: TensorInfo, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Read a whole tensor, or rows ``[a, b)`` of dim 0, into fresh memory."""
    shape = list(info.shape)
    start, nbytes = info.start, info.nbytes
    if rows is not None:
        a, b = rows
        row_bytes = info.nbytes // shape[0] if shape and shape[0] else 0
        start, nbytes, shape[0] = start + a * row_bytes, (b - a) * row_bytes, b - a
    buf = torch.empty(nbytes, dtype=torch.uint8)
    if nbytes:
        _readinto(info.path, start, buf)
    return buf.view(info.dtype).reshape(shape) if shape else buf.view(info.dtype).reshape(())


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw bytes of a tensor (made contiguous), without a copy where possible."""
    t = t.detach().contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy()).cast("B")


def nbytes_of(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


class StreamingWriter:
    """A safetensors file written tensor by tensor, in any order, from a known list of specs.

    Nothing is visible under ``path`` until :meth:`close` checked that every tensor was written:
    data goes to ``path + '.partial'`` first.
    """

    def __init__(self, path: str | Path, specs: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
                 metadata: Mapping[str, str] | None = None):
        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".partial")
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = dict(metadata)
        offset = 0
        self._where: dict[str, tuple[int, int, tuple[int, ...], torch.dtype]] = {}
        for name, (shape, dtype) in specs.items():
            n = nbytes_of(tuple(shape), dtype)
            header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
            self._where[name] = (offset, n, tuple(shape), dtype)
            offset += n
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._base = 8 + len(raw)
        self.total = self._base + offset
        self._pending = set(self._where)
        self._rows: dict[str, list[tuple[int, int]]] = {}  # row ranges written so far (write_rows)
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._pwrite(struct.pack("<Q", len(raw)) + raw, 0)
        os.ftruncate(self._fd, self.total)

    def _pwrite(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done:], offset + done)

    def _check(self, name: str, shape: tuple[int, ...] | None, dtype: torch.dtype | None) -> tuple[int, int]:
        if name not in self._where:
            raise SafetensorsError(f"{self.path}: tensor {name} was not planned for this file")
        offset, n, want_shape, want_dtype = self._where[name]
        if shape is not None and (tuple(shape) != want_shape or dtype != want_dtype):
            raise SafetensorsError(f"{self.path}: tensor {name} is {tuple(shape)} {dtype}, "
                                   f"planned {want_shape} {want_dtype}")
        return self._base + offset, n

    def write(self, name: str, tensor: torch.Tensor) -> int:
        """Write one tensor at its place; returns the bytes written."""
        offset, n = self._check(name, tuple(tensor.shape), tensor.dtype)
        if n:
            self._pwrite(tensor_bytes(tensor), offset)
        self._pending.discard(name)
        return n

    def write_rows(self, name: str, tensor: torch.Tensor, start: int) -> int:
        """Write rows ``[start, start + len(tensor))`` of dim 0 of a planned tensor, so a large one
        (a layer's stacked experts) is filled a block at a time; it counts as written once every
        row was. Returns the bytes written."""
        offset, n = self._check(name, None, None)
        _, _, shape, dtype = self._where[name]
        stop = start + (tensor.shape[0] if tensor.dim() else 0)
        done = self._rows.setdefault(name, [])
        if (tensor.dtype != dtype or not shape or tuple(tensor.shape[1:]) != shape[1:] or not 0 <= start < stop <= shape[0]
                or any(a < stop and start < b for a, b in done)):
            raise SafetensorsError(f"{self.path}: rows [{start}, {stop}) {tuple(tensor.shape)} {tensor.dtype} do not "
                                   f"fit tensor {name}, planned {shape} {dtype}, rows written {sorted(done)}")
        row = n // shape[0]
        self._pwrite(tensor_bytes(tensor), offset + start * row)
        done.append((start, stop))
        if sum(b - a for a, b in done) == shape[0]:
            self._pending.discard(name)
        return (stop - start) * row

    def copy(self, name: str, segs: Sequence[tuple[Path, int, int]], fds: FdCache) -> int:
        """Fill a tensor from file runs (see :mod:`mm_core.checkpoint.rowcopy`), in the kernel."""
        offset, n = self._check(name, None, None)
        got = sum(k for _, _, k in segs)
        if got != n:
            raise SafetensorsError(f"{self.path}: tensor {name} needs {n} bytes, the copy plan gives {got}")
        copy_segments(segs, self._fd, offset, fds)
        self._pending.discard(name)
        return n

    def close(self) -> None:
        """Finish the file; fails (and leaves only the partial file) if a tensor is missing."""
        os.close(self._fd)
        if self._pending:
            missing = sorted(self._pending)
            raise SafetensorsError(f"{self.path}: {len(missing)} planned tensor(s) never written, e.g. {missing[:5]}")
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass
        self._tmp.unlink(missing_ok=True)
