"""`mm-run plugins`: what is installed, whether it loaded, and what it provides."""

from __future__ import annotations

import argparse
import json

from mm_core.plugins import PluginInfo, get_plugin_manager


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--errors", action="store_true", help="show the full traceback of broken plugins")


def _provides_text(info: PluginInfo) -> str:
    if info.status == "broken":
        last = (info.error or "").strip().splitlines()
        return f"error: {last[-1] if last else '?'}"
    parts = [f"{kind}: {', '.join(keys)}" for kind, keys in info.provides.items()]
    return "; ".join(parts) or "-"


def format_table(infos: list[PluginInfo]) -> str:
    rows = [("name", "version", "status", "provides")]
    rows += [(i.name, i.version, i.status, _provides_text(i)) for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    lines = []
    for r in rows:
        lines.append("  ".join(r[c].ljust(widths[c]) for c in range(3)) + "  " + r[3])
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 8)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    infos = list(get_plugin_manager().infos.values())
    if args.json:
        print(json.dumps([i.as_dict() for i in infos], indent=2))
        return 0
    print(format_table(infos))
    broken = [i for i in infos if i.status == "broken"]
    if broken and args.errors:
        for info in broken:
            print(f"\n--- {info.name} ---\n{info.error}")
    elif broken:
        print(f"\n{len(broken)} plugin(s) broken; `mm-run plugins --errors` shows why.")
    return 0
