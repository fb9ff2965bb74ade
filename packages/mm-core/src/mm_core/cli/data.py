"""`mm-run data`: prepare and inspect data.

- ``mm-run data llava-to-mllm --input llava.json --image-dir data/COCO/train2017 --output data/mllm.json``:
  image paths in the output are relative to ``--dataset-dir`` (default: the output's folder, here
  ``data``), the ``basic_parameters.dataset_dir`` a config then sets (see ``mm_core.data.paths``).
- ``mm-run data inspect data.yaml [--seq-len 4096] [--json]``: counts, token-length histogram,
  vision tokens and bad records, without training. The file is a data config (the reference's
  ``data.json`` fields) or a training config with a ``data`` section.

Each bad item (a skipped LLaVA record, a bad record) is one line on stderr naming the file and the
reason; the others are still converted or counted, and the exit status is 1 when any was bad.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from mm_core.errors import MMError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mm-run data", description="prepare and inspect data")
    sub = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    c = sub.add_parser("llava-to-mllm", help="convert LLaVA-Instruct JSON into the mllm format")
    c.add_argument("--input", required=True, help="LLaVA JSON list (e.g. llava_instruct_150k.json)")
    c.add_argument("--image-dir", required=True, help="folder the records' 'image' names are relative to")
    c.add_argument("--output", required=True, help="mllm JSON to write (never overwritten)")
    c.add_argument("--dataset-dir", help="the basic_parameters.dataset_dir the configs will use; image paths are "
                                         "written relative to it (default: the output's folder)")
    i = sub.add_parser("inspect", help="summarise what a data config yields")
    i.add_argument("config", help="YAML/JSON data config, or a training config with a 'data' section")
    i.add_argument("--seq-len", type=int, default=None, help="count samples longer than this as too_long")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def load_data_config(path: str):
    """A :class:`DataConfig` from a data-config file (the reference's data.json layout) or from a
    training config's ``data`` section (``data.config`` inline, or ``data.data_json``)."""
    from mm_core.data.config import data_config_from_dict, with_model_dir
    from mm_core.data.config import load_data_config as load
    from mm_core.errors import ConfigError

    if not Path(path).is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid JSON/YAML ({e})") from None
    data = raw.get("data") if isinstance(raw, dict) else None
    if not isinstance(data, dict):
        return load(path)
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    if data.get("config"):
        cfg = data_config_from_dict(data["config"], f"{path} (data.config)")
    elif data.get("data_json"):
        cfg = load(Path(path).parent / data["data_json"] if not Path(data["data_json"]).is_absolute()
                   and not Path(data["data_json"]).exists() else data["data_json"])
    else:
        cfg = data_config_from_dict(data, f"{path} (data)")
    return with_model_dir(cfg, model.get("hf_dir"))  # as training does


def synthetic_summary(path: str) -> str | None:
    """One line for a training config whose ``data.source`` is synthetic (no files to inspect), else None."""
    from mm_core.engine.config import DataConfig as TrainingData

    if not Path(path).is_file():
        return None  # load_data_config says so
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError:
        return None  # load_data_config says so
    data = raw.get("data") if isinstance(raw, dict) else None
    if not isinstance(data, dict) or data.get("source") != "synthetic":
        return None
    d = TrainingData(**{k: v for k, v in data.items() if k != "config"})
    return (f"{path}: data.source synthetic: {d.synthetic_samples} generated samples of {d.synthetic_min_len}-"
            f"{d.synthetic_max_len} text tokens, no records to inspect")


def _print_summary(s: dict) -> None:
    print(f"records: {s['records']}  usable: {s['usable']}  tokens: {s['tokens']}  "
          f"images: {s['images']}  videos: {s['videos']}  vision tokens: {s['vision_tokens']}")
    ln = s["length"]
    print(f"length: min {ln['min']}  mean {ln['mean']:.1f}  max {ln['max']}")
    top = max((h["count"] for h in s["histogram"]), default=1) or 1
    for h in s["histogram"]:
        print(f"  {h['from']:>7}-{h['to']:<7} {h['count']:>8} {'#' * round(40 * h['count'] / top)}")
    if "packing_efficiency" in s:
        print(f"packing efficiency at this sequence length: {s['packing_efficiency']:.1%}")
    if s["bad_records"]:
        print("bad records: " + ", ".join(f"{k}={v}" for k, v in s["bad_records"].items()))
        for examples in s["bad_examples"].values():
            for e in examples[:2]:
                print(f"  {e}")
    else:
        print("bad records: none")


def _error_line(verb: str):
    """Prints one bad item as one line on stderr (the summary still goes to stdout)."""
    return lambda line: print(f"mm-run data {verb}: error: {' '.join(line.split())}", file=sys.stderr)


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    try:
        if args.verb == "llava-to-mllm":
            from mm_core.data.llava import convert_llava

            root = args.dataset_dir or str(Path(args.output).parent)
            counts = convert_llava(args.input, args.image_dir, args.output, root, on_skip=_error_line(args.verb))
            print(f"wrote {counts['converted']} records to {args.output}; skipped {counts['missing_image']} with a "
                  f"missing image and {counts['bad_format']} malformed; image paths are relative to '{root}' "
                  f"(set basic_parameters.dataset_dir to it)")
            return 1 if counts["missing_image"] or counts["bad_format"] else 0
        from mm_core.data.inspect import inspect_data
        from mm_core.data.template import resolve_template
        from mm_core.plugins import get_plugin_manager

        synthetic = synthetic_summary(args.config)
        if synthetic is not None:
            print(synthetic)
            return 0
        cfg = load_data_config(args.config)
        formatter = get_plugin_manager().formatter(resolve_template(cfg, None)).factory(cfg)
        report = _error_line(args.verb)
        summary = inspect_data(cfg, formatter, seq_len=args.seq_len, on_bad=lambda bad: report(str(bad)))
        print(json.dumps(summary, indent=1)) if args.json else _print_summary(summary)
        return 1 if summary["bad_records"] else 0
    except MMError as e:
        print(f"mm-run data {args.verb}: error: {e}", file=sys.stderr)
        return 1
