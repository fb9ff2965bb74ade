"""``FamilyConformance``: the one suite every model family runs, in this repo or in a plugin.

A family's test module subclasses it with a few lines (pytest collects every check)::

    class TestMyFamily(FamilyConformance):
        family = "my_family"                      # the registered ModelSpec name
        transformers_class = "MyForConditionalGeneration"  # or None
        capabilities = {"image", "tp", "pp", "generation"}

        def make_batch(self, hf_config, case, seed=0): ...

A capability that is off makes its checks skip, saying so. Tiny fixtures are built once per class
(``tiny_hf_dir``; by default the spec's ``tiny_checkpoint`` hook), so a family runs in about a
minute on two cores.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from mm_core.specs import ModelSpec
from mm_core.testing.convert_checks import ConverterChecks
from mm_core.testing.formatter_checks import FormatterChecks
from mm_core.testing.generation_checks import GenerationChecks
from mm_core.testing.model_checks import ModelChecks
from mm_core.testing.parallel_checks import ParallelChecks

CAPABILITIES = frozenset({"image", "video", "tp", "sequence_parallel", "pp", "cp", "generation", "formatter"})
CASES = ("text", "image", "two_images", "video")  # what make_batch must build (media cases: one row)


class FamilyConformance(ModelChecks, ConverterChecks, GenerationChecks, FormatterChecks, ParallelChecks):
    """Base class of a family's conformance tests; see the module docstring."""

    family: ClassVar[str] = ""
    transformers_class: ClassVar[str | None] = None
    capabilities: ClassVar[set[str] | frozenset[str]] = frozenset()
    # why a capability is off, shown in the skip reason (e.g. {"tp": "the spec has no tp_plan yet"})
    capability_notes: ClassVar[Mapping[str, str]] = {}

    # -- what the family provides ----------------------------------------------------------------

    def tiny_hf_dir(self, path: Path) -> Path:
        """Write a tiny random HF directory (config.json + safetensors) into ``path``.

        Default: the spec's ``tiny_checkpoint`` hook. Override to pass smaller sizes (1-2 layers
        per module keep the suite fast; the pipeline checks need at least 2 of each)."""
        spec = self.registered_spec()
        if spec.tiny_checkpoint is None:
            raise NotImplementedError(f"model '{spec.name}' registers no tiny_checkpoint: override tiny_hf_dir")
        return Path(spec.tiny_checkpoint(path))

    def make_batch(self, hf_config: dict[str, Any], case: str, seed: int = 0) -> dict[str, torch.Tensor]:
        """Model inputs that both our model and the transformers class take, with ``labels`` and
        ``attention_mask``. ``case`` is one of ``CASES``: "text" has two rows of different
        lengths, the media cases one row each ("two_images": images of two sizes)."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_batch(hf_config, case, seed)")

    def formatter_dir(self, path: Path) -> Path:
        """A directory with the processor/tokenizer files the formatter and ``AutoProcessor`` load."""
        return self.tiny_hf_dir(path)

    # -- shared fixtures and helpers -------------------------------------------------------------

    def registered_spec(self) -> ModelSpec:
        from mm_core.plugins import get_plugin_manager

        if not self.family:
            raise NotImplementedError(f"{type(self).__name__}.family: give the registered model name")
        return get_plugin_manager().model(self.family)

    def require(self, capability: str) -> None:
        """Skip the calling check when the family does not have ``capability``."""
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability '{capability}'; known: {sorted(CAPABILITIES)}")
        if capability not in self.capabilities:
            note = self.capability_notes.get(capability)
            pytest.skip(f"{self.family}: capability '{capability}' is off" + (f" ({note})" if note else ""))

    def require_case(self, case: str) -> None:
        if case in ("image", "two_images"):
            self.require("image")
        elif case == "video":
            self.require("video")

    def test_declared_capabilities_are_known(self) -> None:
        """A misspelt capability would silently skip its checks."""
        unknown = set(self.capabilities) - CAPABILITIES
        assert not unknown, f"{type(self).__name__}.capabilities: unknown {sorted(unknown)}; known: " \
                            f"{sorted(CAPABILITIES)}"
        spec = self.registered_spec()
        assert spec.name == self.family

    @pytest.fixture(scope="class")
    def spec(self) -> ModelSpec:
        torch.set_num_threads(1)
        return self.registered_spec()

    @pytest.fixture(scope="class")
    def hf_dir(self, spec: ModelSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
        with torch.random.fork_rng(devices=[]):
            return self.tiny_hf_dir(tmp_path_factory.mktemp(f"{spec.name}_hf"))

    @pytest.fixture(scope="class")
    def hf_config(self, hf_dir: Path) -> dict[str, Any]:
        return json.loads((hf_dir / "config.json").read_text())

    @pytest.fixture(scope="class")
    def converter(self, spec: ModelSpec) -> Any:
        from mm_core.plugins import get_plugin_manager

        if spec.converter is None:
            pytest.skip(f"{self.family}: the spec registers no converter")
        return get_plugin_manager().converter(spec.converter).factory()

    @pytest.fixture(scope="class")
    def depths(self, converter: Any, hf_config: dict[str, Any]) -> tuple[int, int]:
        """(vision layers, LLM layers), as the converter's rule table counts them."""
        d = converter.depths(hf_config)
        return int(d.get("vit", 0)), int(d.get("llm", 0))

    @pytest.fixture(scope="class")
    def model(self, hf_dir: Path) -> torch.nn.Module:
        """Our whole model, loaded from the HF dir through the registry (the users' entry point)."""
        from mm_core.nn.pretrained import load_pretrained

        return load_pretrained(hf_dir, dtype=torch.float32).eval()

    @pytest.fixture(scope="class")
    def hf_model(self, hf_dir: Path) -> torch.nn.Module:
        if self.transformers_class is None:
            pytest.skip(f"{self.family}: no transformers class")
        import transformers

        cls = getattr(transformers, self.transformers_class)
        return cls.from_pretrained(hf_dir, dtype=torch.float32).eval()
