"""Expert parallel (ep 2, gloo, dropless all-to-all dispatch and combine) gives one GLM-4.5V MoE
layer the outputs and gradients of the whole layer: inputs, router and shared expert per rank,
each expert's weights summed over both ranks' tokens (including a rank that sends an expert nothing).
The engine's layouts (ep x dp, with tp, pp, cp, resharded resume) are in test_ep_layouts.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_ep2_layer_equals_the_whole_layer(tmp_path: Path) -> None:
    worker = Path(__file__).with_name("_ep_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(worker),
           str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"the 2-process launch failed:\n{proc.stderr[-4000:]}"
    for rank in range(2):
        bad = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert not bad, f"ep rank {rank}: " + "; ".join(bad)


def test_ep_layouts_that_do_not_fit_are_refused_by_field() -> None:
    import pytest

    from mm_core.engine.expert_parallel import check_expert_parallel
    from mm_core.errors import ConfigError

    for ep, dp, tp, cp in ((1, 4, 2, 1), (4, 4, 1, 1), (2, 4, 1, 1), (2, 2, 2, 1), (4, 2, 1, 2), (2, 1, 4, 2)):
        check_expert_parallel(ep, dp, tp, cp)  # ep divides dp x cp; tp replicates the experts
    for ep, dp, tp, cp in ((0, 2, 1, 1), (3, 4, 1, 1), (4, 2, 2, 1), (8, 2, 1, 2)):
        with pytest.raises(ConfigError, match="parallel.ep"):
            check_expert_parallel(ep, dp, tp, cp)
