"""`mm-convert <Converter> <verb> --cfg.<field> value ...`: the grammar users of the reference type.

The converter names come from every installed plugin (``mm-convert --help`` lists them); a
converter's methods are the verbs, their typed ``cfg`` dataclasses the ``--cfg.*`` fields
(jsonargparse, so ``--config file.yaml`` and ``--print_config`` work). The DCP verbs take flat
flags (``hf_to_dcp --hf_dir X --save_dir Y``).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser

PROG = "mm-convert"
EXAMPLES = """examples:
  mm-convert Qwen2_5_VLConverter hf_to_mm --cfg.hf_config.hf_dir ckpt/hf/Qwen2.5-VL-7B-Instruct \\
      --cfg.mm_dir ckpt/mm/Qwen2.5-VL-7B-Instruct --cfg.parallel_config.tp_size 1 \\
      --cfg.parallel_config.vit_pp_layers [32,0,0,0] --cfg.parallel_config.llm_pp_layers [1,10,10,7]
  mm-convert Qwen2_5_VLConverter mm_to_hf --cfg.mm_dir ckpt/mm/Qwen2.5-VL-7B-Instruct \\
      --cfg.save_hf_dir out/hf --cfg.hf_config.hf_dir ckpt/hf/Qwen2.5-VL-7B-Instruct
  mm-convert Qwen2_5_VLConverter resplit --cfg.mm_dir A --cfg.save_dir B --cfg.parallel_config.tp_size 2
  mm-convert Qwen2_5_VLConverter hf_to_dcp --hf_dir H --save_dir ckpt/dcp
  mm-convert Qwen2_5_VLConverter dcp_to_hf --hf_dir H --dcp_dir save/iter_0000100 --save_dir out/hf
"""


def _overview() -> str:
    from mm_core.plugins import get_plugin_manager

    pm = get_plugin_manager()
    lines = [f"usage: {PROG} <Converter> <verb> [--cfg.<field> VALUE ...] [--config FILE] [--print_config]",
             f"       {PROG} <Converter> --help | {PROG} <Converter> <verb> --help", "", "converters:"]
    owners = {name: plugin for plugin, info in pm.infos.items() for name in info.provides.get("converters", [])}
    specs = list(pm.converters)
    if not specs:
        lines.append("  (none: install a model plugin such as mm-qwen)")
    for spec in specs:
        lines.append(f"  {spec.name:<28} {spec.description}  [{owners.get(spec.name, '?')}]")
        lines.append(f"  {'':<28} verbs: {', '.join(spec.verbs)}")
    broken = pm.broken()
    if broken:
        lines += ["", "broken plugins (their converters are unavailable; see `mm-run plugins`):"]
        lines += [f"  {name}" for name in sorted(broken)]
    return "\n".join(lines + ["", EXAMPLES])


def build_parser(name: str, cls: type, verbs: Sequence[str]) -> ArgumentParser:
    """One subcommand per verb, its arguments from the method signature (``cfg`` -> ``--cfg.*``)."""
    parser = ArgumentParser(prog=f"{PROG} {name}", description=inspect.getdoc(cls), exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML/JSON file with the settings")
    sub = parser.add_subcommands(required=True, dest="verb")
    for verb in verbs:
        method = getattr(cls, verb, None)
        if method is None:
            continue
        doc = inspect.getdoc(method) or ""
        p = ArgumentParser(prog=f"{PROG} {name} {verb}", description=doc, exit_on_error=False)
        p.add_argument("--config", action=ActionConfigFile, help="YAML/JSON file with the settings")
        p.add_method_arguments(cls, verb, as_group=False)
        sub.add_subcommand(verb, p, help=doc.split("\n", 1)[0])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from mm_core.errors import MMError
    from mm_core.plugins import get_plugin_manager

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_overview())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    try:
        spec = get_plugin_manager().converter(name)
        conv = spec.factory()
    except MMError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    parser = build_parser(name, type(conv), spec.verbs)
    try:
        cfg = parser.parse_args(rest)
    except SystemExit as e:  # --help / --print_config exit 0 from jsonargparse
        return int(e.code or 0)
    except Exception as e:  # noqa: BLE001 - jsonargparse reports bad values this way
        print(f"{PROG} {name}: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    verb = cfg.verb
    init = parser.instantiate(cfg) if hasattr(parser, "instantiate") else parser.instantiate_classes(cfg)
    kwargs: dict[str, Any] = {k: v for k, v in vars(init[verb]).items() if k not in ("config", "__path__")}
    kwargs.pop("__default_config__", None)
    try:
        getattr(conv, verb)(**kwargs)
    except MMError as e:
        print(f"{PROG} {name} {verb}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
