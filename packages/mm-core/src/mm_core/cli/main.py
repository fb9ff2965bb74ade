"""`mm-run`: the user's one command. Each subcommand lives in its own module and is imported only
when chosen, so `mm-run plugins` stays fast and a broken subsystem cannot break the others."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from mm_core import __version__
from mm_core.errors import MMError

# subcommand -> (module with `add_arguments(parser)` and `run(args) -> int`, help)
SUBCOMMANDS = {
    "finetune": ("mm_core.cli.finetune", "fine-tune a model from a config (YAML/JSON + --section.field overrides)"),
    "infer": ("mm_core.cli.infer", "generate answers for images, videos and prompts"),
    "data": ("mm_core.cli.data", "prepare and inspect data (llava-to-mllm, inspect)"),
    "plugins": ("mm_core.cli.plugins", "list installed plugins, their versions, status and what they provide"),
    "demo": ("mm_core.cli.demo", "train a tiny model end to end on this CPU in minutes"),
    "lora": ("mm_core.cli.lora", "merge LoRA adapters into their base, or export them for peft"),
}


def version_text() -> str:
    from mm_core.plugins import get_plugin_manager

    lines = [f"mm-core {__version__}"]
    for info in get_plugin_manager().infos.values():
        if info.name != "mm-core":
            suffix = "" if info.status == "ok" else f" ({info.status})"
            lines.append(f"{info.name} {info.version}{suffix}")
    return "\n".join(lines)


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="show core and plugin versions and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mm-run", description="mm: fine-tune vision-language models.")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    try:
        module = importlib.import_module(SUBCOMMANDS[name][0])
        if hasattr(module, "main"):  # subcommands with their own parser (jsonargparse) take the raw argv
            return int(module.main(rest) or 0)
        sub = argparse.ArgumentParser(prog=f"mm-run {name}", description=SUBCOMMANDS[name][1])
        module.add_arguments(sub)
        return int(module.run(sub.parse_args(rest)) or 0)
    except MMError as e:  # user-facing errors already say what is wrong and what to do
        if os.environ.get("MM_TRACEBACK"):
            raise
        print(f"mm-run {name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
