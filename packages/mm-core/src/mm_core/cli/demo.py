"""`mm-run demo`: not yet available (lands with the demo)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str]) -> int:
    print("mm-run demo is not yet available in this version (it lands with the demo).", file=sys.stderr)
    return 2
