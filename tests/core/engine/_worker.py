"""Test worker: train with a finetune config, then dump per-step records and the final weights.

Run in process (``run(argv, out)``) or under torchrun: ``python -m torch.distributed.run
--nproc-per-node N tests/core/engine/_worker.py OUT_DIR [--kill-after K] <finetune args>``.
Weights are written under whole-model names (one file per rank, merged by the test).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch


def run(argv: list[str], out: str | Path, kill_after: int | None = None, keep_group: bool = False) -> list[dict]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from mm_core.engine.config import parse_finetune_config
    from mm_core.engine.row_order import canonical_rows
    from mm_core.engine.trainer import Trainer, shutdown

    torch.set_num_threads(1)
    cfg = parse_finetune_config(argv)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg)

    def on_step(step: int) -> None:
        if kill_after is not None and step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    finished = False
    try:
        records = trainer.train(on_step=on_step)
        weights = {}
        for stage in trainer.stages.modules:
            sd = get_model_state_dict(stage, options=StateDictOptions(full_state_dict=True))
            for k, v in sd.items():
                local = k[len("model."):]
                if local in stage.gated:  # tp-blocked gated rows: compare in checkpoint order
                    v = canonical_rows(v, stage.gated[local])
                weights[stage.names.to_global(local)] = v.detach().clone()
        rank = trainer.par.rank
        torch.save(weights, out / f"weights_rank{rank}.pt")
        opt_state = sum(len(o.state) for o in trainer.optimizers if o is not None)
        if rank == 0:
            (out / "records.json").write_text(json.dumps(records))
        (out / f"optim_rank{rank}.json").write_text(json.dumps({"params_with_state": opt_state}))
        finished = True
    finally:
        if not keep_group:
            shutdown(finished)
    return records


def merged_weights(out: str | Path) -> dict[str, torch.Tensor]:
    merged: dict[str, torch.Tensor] = {}
    for f in sorted(Path(out).glob("weights_rank*.pt")):
        merged.update(torch.load(f, weights_only=True))
    return merged


if __name__ == "__main__":
    # _worker.py OUT [--kill-after K] <finetune args>   or   _worker.py --runs ROOT name=cfg.yaml ...
    args = sys.argv[1:]
    if args[0] == "--runs":  # several runs in the same processes (one launch, several layouts)
        root = Path(args[1])
        for i, item in enumerate(args[2:]):
            name, cfg_file = item.split("=", 1)
            run(["--config", cfg_file], root / name, keep_group=i < len(args) - 3)
        sys.exit(0)
    out_dir = args.pop(0)
    kill = None
    if args and args[0] == "--kill-after":
        kill = int(args[1])
        args = args[2:]
    run(args, out_dir, kill)
