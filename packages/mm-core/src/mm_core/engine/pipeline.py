"""Pipeline parallel with torch.distributed.pipelining (1F1B, interleaved 1F1B, GPipe).

The micro-batches themselves never travel through the schedule: each stage module takes its
micro-batch from its ``feed`` in forward order (the same order on every stage), and the schedule
only moves the hidden states. The first stage receives the micro-batch index, the last stage
returns the (already scaled) loss, so the schedule's loss function is the identity and gradients
are not rescaled by it.
"""

from __future__ import annotations

import torch
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

from mm_core.engine.mesh import Parallel
from mm_core.engine.model_setup import EngineStage


def _identity_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return output.sum()


class PipelineRunner:
    """Runs one step's micro-batches through this rank's stages."""

    def __init__(self, stages: list[EngineStage], indices: list[int], num_stages: int, par: Parallel,
                 schedule: str, n_microbatches: int):
        self.par = par
        self.n = n_microbatches
        self.stages = [PipelineStage(m, i, num_stages, par.device, group=par.group("pp"))
                       for m, i in zip(stages, indices)]
        self.has_first = 0 in indices
        self.has_last = num_stages - 1 in indices
        if schedule == "Interleaved1F1B":
            self.schedule = ScheduleInterleaved1F1B(self.stages, n_microbatches, loss_fn=_identity_loss,
                                                    scale_grads=False)
        else:
            cls = Schedule1F1B if schedule == "1F1B" else ScheduleGPipe
            self.schedule = cls(self.stages[0], n_microbatches, loss_fn=_identity_loss, scale_grads=False)

    def step(self) -> list[torch.Tensor]:
        """Forward and backward of all micro-batches; returns the last stage's losses (else [])."""
        args = (torch.arange(self.n, device=self.par.device, dtype=torch.float32),) if self.has_first else ()
        target = torch.zeros(self.n, device=self.par.device) if self.has_last else None
        losses: list[torch.Tensor] = []
        self.schedule.step(*args, target=target, losses=losses)
        return losses
