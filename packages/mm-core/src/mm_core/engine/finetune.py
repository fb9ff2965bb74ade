"""Worker entry point: ``torchrun -m mm_core.engine.finetune --config f.yaml [--section.field v]``.

Also what `mm-run finetune --nproc-per-node N` launches in every worker process.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import yaml

from mm_core.config import config_to_dict
from mm_core.engine.config import parse_finetune_config
from mm_core.errors import MMError


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_finetune_config(argv, prog="mm_core.engine.finetune")
    except MMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import torch

    from mm_core.engine.trainer import Trainer, shutdown

    torch.set_num_threads(max(1, torch.get_num_threads()))
    finished = False
    try:
        Trainer(cfg, yaml.safe_dump(config_to_dict(cfg), sort_keys=False)).train()
        finished = True
    except MMError as e:  # a user error (config, layout, checkpoint): its message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        shutdown(finished)
    return 0


if __name__ == "__main__":
    sys.exit(main())
