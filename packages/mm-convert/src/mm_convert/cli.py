"""`mm-convert`: not yet available (lands with the conversion engine)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("mm-convert is not yet available in this version.", file=sys.stderr)
    return 2
