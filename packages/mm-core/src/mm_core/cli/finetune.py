"""`mm-run finetune`: not yet available (lands with the training engine)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str]) -> int:
    print("mm-run finetune is not yet available in this version (it lands with the training engine).", file=sys.stderr)
    return 2
