"""Checks of the family's converter: exact round trips through every layout and through DCP.

The verbs are called on the object the registry's ConverterSpec makes (its methods are the
``mm-convert`` verbs), so core never imports mm-convert; the verb configs are built from the
methods' own type hints.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest

from mm_core.testing.hf_files import assert_same_hf_dirs
from mm_core.testing.layouts import pipeline_layouts


def verb_config(verb: Any, values: dict[str, Any]) -> Any:
    """The config object a verb takes (its ``cfg`` parameter's dataclass), nested sections from dicts."""
    return _build(typing.get_type_hints(verb)["cfg"], values)


def _build(cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        kind = hints[f.name]
        kwargs[f.name] = _build(kind, value) if dataclasses.is_dataclass(kind) and isinstance(value, dict) else value
    return cls(**kwargs)


class ConverterChecks:
    """Mixed into FamilyConformance."""

    def _layout(self, name: str, depths: tuple[int, int]) -> tuple[int, Any, Any]:
        if name in ("tp1", "tp2"):
            return int(name[-1]), None, None
        self.require("pp")
        vit, llm = pipeline_layouts(*depths)["pp2" if name == "pp2" else "virtual_chunks"]
        return (2 if name == "tp2_virtual_chunks" else 1), vit, llm

    @pytest.mark.parametrize("layout_name", ["tp1", "tp2", "pp2", "tp2_virtual_chunks"])
    def test_hf_mm_hf_round_trip_is_exact(self, layout_name: str, converter: Any, hf_dir: Path,
                                          depths: tuple[int, int], tmp_path: Path) -> None:
        tp, vit, llm = self._layout(layout_name, depths)
        converter.hf_to_mm(verb_config(converter.hf_to_mm, {
            "mm_dir": str(tmp_path / "mm"), "hf_config": {"hf_dir": str(hf_dir)},
            "parallel_config": {"tp_size": tp, "vit_pp_layers": vit, "llm_pp_layers": llm}}))
        converter.mm_to_hf(verb_config(converter.mm_to_hf, {"mm_dir": str(tmp_path / "mm"),
                                                            "save_hf_dir": str(tmp_path / "back")}))
        assert_same_hf_dirs(hf_dir, tmp_path / "back")

    def test_hf_dcp_hf_round_trip_is_exact(self, converter: Any, hf_dir: Path, tmp_path: Path) -> None:
        converter.hf_to_dcp(hf_dir=str(hf_dir), save_dir=str(tmp_path / "dcp"))
        converter.dcp_to_hf(hf_dir=str(hf_dir), dcp_dir=str(tmp_path / "dcp"), save_dir=str(tmp_path / "back"))
        assert_same_hf_dirs(hf_dir, tmp_path / "back")
