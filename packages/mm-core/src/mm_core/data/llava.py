"""LLaVA-Instruct records -> the mllm format (the conversion users run today).

``{"id", "image": "x.jpg", "conversations": [{"from": "human"|"gpt", "value"}]}`` becomes
``{"images": ["COCO2017/train2017/x.jpg"], "messages": [{"role": "user"|"assistant", "content"}]}``.
Image paths follow :mod:`mm_core.data.paths`: relative to the dataset dir the training config will
name (default: the output's folder), so ``--output data/x.json`` pairs with ``dataset_dir: ./data``.
Records whose image is missing are skipped and counted; an existing output is never overwritten.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from mm_core.data.bad_records import DataError
from mm_core.data.paths import record_path

ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def convert_llava(input_path: str | Path, image_dir: str | Path, output_path: str | Path,
                  dataset_dir: str | Path | None = None, on_skip: Callable[[str], None] | None = None) -> Counter:
    """Write ``output_path`` (JSON list) with image paths relative to ``dataset_dir`` (default: the
    output's folder); returns counts: ``converted``, ``missing_image``, ``bad_format``. ``on_skip``
    gets one line per skipped record (which record, which file, why)."""
    input_path, output_path = Path(input_path), Path(output_path)
    dataset_dir = Path(dataset_dir) if dataset_dir is not None else output_path.parent
    if output_path.exists():
        raise DataError(f"output '{output_path}' already exists; remove it or choose another --output")
    if not input_path.is_file():
        raise DataError(f"input '{input_path}' does not exist")
    try:
        records = json.loads(input_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{input_path} is not valid JSON: {e}") from None
    if not isinstance(records, list):
        raise DataError(f"{input_path}: expected a JSON list of LLaVA records")
    counts: Counter = Counter()
    out = []
    skip = on_skip or (lambda line: None)
    for i, rec in enumerate(tqdm(records, desc="llava-to-mllm", unit="rec", mininterval=2.0,
                                 disable=len(records) < 5000)):
        turns = rec.get("conversations") if isinstance(rec, dict) else None
        if not isinstance(turns, list) or any(t.get("from") not in ROLES for t in turns if isinstance(t, dict)):
            counts["bad_format"] += 1
            skip(f"{input_path}[{i}]: not a LLaVA record (needs 'conversations' of 'from' {'/'.join(ROLES)} "
                 "and 'value'): skipped")
            continue
        new = {}
        if rec.get("image"):
            path = os.path.join(str(image_dir), rec["image"])
            if not os.path.isfile(path):
                counts["missing_image"] += 1
                skip(f"{input_path}[{i}]: image '{path}' does not exist (--image-dir '{image_dir}'): skipped")
                continue
            new["images"] = [record_path(path, dataset_dir)]
        new["messages"] = [{"role": ROLES[t["from"]], "content": t.get("value", "")} for t in turns]
        out.append(new)
        counts["converted"] += 1
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(f".{output_path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(out, ensure_ascii=False, indent=1), encoding="utf-8")
    if output_path.exists():  # appeared while we worked
        tmp.unlink()
        raise DataError(f"output '{output_path}' appeared during conversion; not overwriting it")
    os.replace(tmp, output_path)
    return counts
