"""`mm-run lora`: merge trained adapters into their base, or export them in PEFT's layout."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    merge = sub.add_parser("merge", help="fold adapters into the base weights; writes a checkpoint in the base's layout")
    merge.add_argument("--base", required=True, help="the base: an HF directory or an mm directory (mm-convert)")
    merge.add_argument("--adapters", required=True, help="an adapters directory (<save>/iter_N/lora)")
    merge.add_argument("--out", required=True, help="a new directory for the merged checkpoint (never overwritten)")
    merge.add_argument("--no-check-base", action="store_true",
                       help="merge even when the base's fingerprint differs from the one the adapters were trained on")
    peft = sub.add_parser("export-peft", help="write adapter_config.json + adapter_model.safetensors for peft")
    peft.add_argument("--adapters", required=True, help="an adapters directory (<save>/iter_N/lora)")
    peft.add_argument("--base", required=True, help="the HF directory of the base (names and config)")
    peft.add_argument("--out", required=True, help="a new directory (never overwritten)")


def run(args: argparse.Namespace) -> int:
    if args.action == "merge":
        from mm_core.lora.merge_dirs import merge_checkpoint

        summary = merge_checkpoint(args.base, args.adapters, args.out, check_base=not args.no_check_base)
    else:
        from mm_core.lora.peft_export import export_peft

        summary = export_peft(args.adapters, args.base, args.out)
    print(json.dumps(summary))
    return 0
