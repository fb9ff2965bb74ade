"""Fold adapters into base weights: ``W[rows of section s] += scaling * B_s @ A_s``."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from mm_core.lora.sections import Sections

_KEY = re.compile(r"^(.*)\.lora_([AB])\.(\d+)$")


def adapter_modules(adapters: Mapping[str, torch.Tensor]) -> dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """``{module path: ([A_0, A_1, ...], [B_0, B_1, ...])}`` from adapter tensors by name."""
    found: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    for name, t in adapters.items():
        m = _KEY.match(name)
        if m is None:
            raise ValueError(f"'{name}' is not an adapter tensor name (<module>.lora_A.<i> / lora_B.<i>)")
        found.setdefault(m.group(1), {"A": {}, "B": {}})[m.group(2)][int(m.group(3))] = t
    out = {}
    for module, ab in found.items():
        n = len(ab["A"])
        if sorted(ab["A"]) != list(range(n)) or sorted(ab["B"]) != list(range(n)):
            raise ValueError(f"{module}: adapter sections A {sorted(ab['A'])} and B {sorted(ab['B'])} do not pair up")
        out[module] = ([ab["A"][i] for i in range(n)], [ab["B"][i] for i in range(n)])
    return out


def delta(a_list: list[torch.Tensor], b_list: list[torch.Tensor], sections: Sections, scaling: float) -> torch.Tensor:
    """The weight update of one module, in the mm weight's row order (fp32)."""
    a = torch.cat([x.float() for x in a_list])
    b = torch.block_diag(*[x.float() for x in b_list])
    return scaling * (b @ a)[sections.concat_of_row]


def merge_into(weights: dict[str, torch.Tensor], adapters: Mapping[str, torch.Tensor], scaling: float,
               sections_of) -> list[str]:
    """Add every adapter's update to its module's ``.weight`` in ``weights`` (whole-model mm names,
    updated in place, kept in their dtype); ``sections_of(weight key, shape) -> Sections``.
    Returns the merged weight names."""
    done = []
    for module, (a_list, b_list) in sorted(adapter_modules(adapters).items()):
        key = f"{module}.weight"
        if key not in weights:
            raise KeyError(f"adapter module {module}: the base has no weight '{key}'")
        w = weights[key]
        sec = sections_of(key, (w.shape[0], w.shape[1]))
        if sec.sizes != tuple(b.shape[0] for b in b_list):
            raise ValueError(f"{module}: adapter sections {[b.shape[0] for b in b_list]} do not match the base's "
                             f"{list(sec.sizes)}")
        weights[key] = (w.float() + delta(a_list, b_list, sec, scaling)).to(w.dtype)
        done.append(key)
    return done
