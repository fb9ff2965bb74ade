"""`mm-run infer`: not yet available (lands with the Qwen2.5-VL model)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str]) -> int:
    print("mm-run infer is not yet available in this version (it lands with the Qwen2.5-VL model).", file=sys.stderr)
    return 2
