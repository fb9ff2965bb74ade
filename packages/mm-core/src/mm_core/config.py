"""Typed configuration: dataclasses parsed by jsonargparse from YAML/JSON files plus
``--section.field value`` overrides.

Errors say where the bad value came from (which file, or the command line), which field, and
what is expected, before any work starts.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from mm_core.errors import ConfigError

T = TypeVar("T")


def build_parser(cls: type, *, prog: str, description: str | None = None) -> ArgumentParser:
    """A jsonargparse parser for dataclass ``cls`` with ``--config FILE`` and ``--print_config``."""
    parser = ArgumentParser(prog=prog, description=description or cls.__doc__, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML or JSON file with the settings")
    parser.add_class_arguments(cls, as_group=False)
    return parser


def _config_files(argv: Sequence[str]) -> list[str]:
    files = []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def _explain(message: str, cls: type) -> str:
    """Turn jsonargparse's wording into one that names the dotted field and the valid choices."""
    m = re.search(r"Group '([\w.]+)' does not accept option '([\w.]+)'", message)
    if m:
        group, key = m.groups()
        return f"unknown field '{group}.{key}'; valid fields of '{group}': {', '.join(_field_names(cls, group))}"
    m = re.search(r"unrecognized arguments: (.*)", message)
    if m:
        return f"unknown field(s) {m.group(1).strip()}; run with --help to list the valid fields"
    m = re.search(r'Parser key "([\w.]+)":\s*(.*)', message, re.S)
    if m:
        return f"field '{m.group(1)}': {' '.join(m.group(2).split())}"
    return " ".join(message.split())


def _field_names(cls: type, dotted: str) -> list[str]:
    for part in dotted.split("."):
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        if part not in fields:
            return []
        cls = fields[part].type if isinstance(fields[part].type, type) else _resolve(cls, part)
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


def _resolve(cls: type, name: str) -> type:
    import typing

    return typing.get_type_hints(cls)[name]


def _to_dataclass(cls: type[T], ns: Namespace) -> T:
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in ns:
            values[f.name] = ns[f.name]
    return cls(**values)


def parse_config(cls: type[T], argv: Sequence[str], *, prog: str, description: str | None = None) -> T:
    """Parse ``argv`` (``--config file.yaml`` and/or ``--section.field value``) into ``cls``.

    Every config file is first validated on its own so that an error names the file; the command
    line is validated next. Raises ``ConfigError``.
    """
    argv = list(argv)
    parser = build_parser(cls, prog=prog, description=description)
    for path in _config_files(argv):
        if not Path(path).is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        try:
            parser.parse_path(path, defaults=True)
        except Exception as e:  # jsonargparse raises ArgumentError / ParserError / yaml errors
            raise ConfigError(f"{path}: {_explain(str(e), cls)}") from None
    try:
        ns = parser.parse_args(argv)
    except Exception as e:
        raise ConfigError(f"command line: {_explain(str(e), cls)}") from None
    ns = parser.instantiate(ns) if hasattr(parser, "instantiate") else parser.instantiate_classes(ns)
    ns.pop("config", None)
    try:
        return _to_dataclass(cls, ns)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict of a (nested) dataclass config, for logging and saving next to checkpoints."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a config as YAML that ``--config`` reads back."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
