"""`mm-run data`: not yet available (lands with the data pipeline)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str]) -> int:
    print("mm-run data is not yet available in this version (it lands with the data pipeline).", file=sys.stderr)
    return 2
