"""The map-style pre-pass: every record's token length (or why it is bad), cached on disk.

Lengths let the loader plan packed micro-batches for a whole epoch up front, so resuming is a
matter of an (epoch, position) pair. Vision tokens are counted from image headers through the
processor's own size rule, so the pass does not decode pixels. The cache file is keyed by the
content of the data files, the formatter's fingerprint (tokenizer, template, settings) and the
reader settings, and written to a unique temporary name then renamed: processes and nodes that
share ``cache_dir`` either see a whole file or none, never a torn one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mm_core.data.bad_records import BadRecord
from mm_core.data.config import DataConfig
from mm_core.data.records import RawRecord, dataset_files, parse_for

logger = logging.getLogger("mm.data")
INDEX_VERSION = 1


@dataclass
class RecordIndex:
    """Per record: where it is, its token length (-1 if bad) and the bad reason/detail."""

    wheres: list[str]
    lengths: list[int]
    bad: dict[int, tuple[str, str]]  # record number -> (reason, detail)

    def bad_records(self) -> list[BadRecord]:
        return [BadRecord(reason, self.wheres[i], detail) for i, (reason, detail) in sorted(self.bad.items())]


def cache_key(config: DataConfig, formatter: Any) -> str:
    """Hash of data file contents + formatter fingerprint + reader settings."""
    h = hashlib.sha256(f"index-v{INDEX_VERSION}".encode())
    for path in dataset_files(config.basic_parameters):
        h.update(str(path.resolve()).encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    basic = config.basic_parameters
    h.update(json.dumps({"attr": asdict(config.attr), "dataset_dir": str(Path(basic.dataset_dir).resolve()),
                         "max_samples": basic.max_samples, "template": basic.template}, sort_keys=True).encode())
    h.update(formatter.fingerprint().encode())
    return h.hexdigest()[:24]


def _identity(x: Any) -> Any:
    return x


class _Chunks(Dataset):
    """Chunk ``k`` of the records: each record's length or bad reason (run in DataLoader workers)."""

    def __init__(self, raws: Sequence[RawRecord], config: DataConfig, formatter: Any, size: int):
        self.raws, self.config, self.formatter, self.size = raws, config, formatter, size

    def __len__(self) -> int:
        return -(-len(self.raws) // self.size)

    def __getitem__(self, k: int) -> list[tuple[int, str | None, str | None]]:
        out: list[tuple[int, str | None, str | None]] = []
        for raw in self.raws[k * self.size:(k + 1) * self.size]:
            try:
                sample = parse_for(raw, self.config, self.formatter)
                out.append((len(self.formatter.encode(sample, pixels=False)["input_ids"]), None, None))
            except BadRecord as e:
                out.append((-1, e.reason, e.detail))
        return out


def _compute(raws: Sequence[RawRecord], config: DataConfig, formatter: Any) -> RecordIndex:
    workers = config.dataloader_param.num_workers if len(raws) >= 1000 else 0
    chunks = DataLoader(_Chunks(raws, config, formatter, 256), batch_size=None, num_workers=workers,
                        collate_fn=_identity)
    lengths: list[int] = []
    bad: dict[int, tuple[str, str]] = {}
    with tqdm(total=len(raws), desc="indexing records", unit="rec", mininterval=2.0, disable=len(raws) < 2000) as bar:
        for chunk in chunks:
            for n, reason, detail in chunk:
                if reason is not None:
                    bad[len(lengths)] = (reason, detail)
                lengths.append(n)
                if reason is not None and config.basic_parameters.strict:
                    return RecordIndex([r.where for r in raws][: len(lengths)], lengths, bad)
            bar.update(len(chunk))
    return RecordIndex([r.where for r in raws], lengths, bad)


def build_index(raws: Sequence[RawRecord], config: DataConfig, formatter: Any) -> RecordIndex:
    """The index of ``raws``: loaded from ``cache_dir`` when present, else computed (and saved)."""
    cache_dir = config.basic_parameters.cache_dir
    path = None
    if cache_dir:
        path = Path(cache_dir) / f"index-{cache_key(config, formatter)}.json"
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                if data.get("version") == INDEX_VERSION and len(data["lengths"]) == len(raws):
                    logger.info("data index loaded from %s", path)
                    return RecordIndex([r.where for r in raws], data["lengths"],
                                       {int(k): tuple(v) for k, v in data["bad"].items()})
            except (OSError, ValueError, KeyError):
                logger.warning("ignoring unreadable data index cache %s", path)
    index = _compute(raws, config, formatter)
    if path is not None and len(index.lengths) == len(raws):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_text(json.dumps({"version": INDEX_VERSION, "lengths": index.lengths,
                                       "bad": {str(k): list(v) for k, v in index.bad.items()}}))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return index
