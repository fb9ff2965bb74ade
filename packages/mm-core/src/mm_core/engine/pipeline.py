"""Pipeline parallel with torch.distributed.pipelining (1F1B, interleaved 1F1B, GPipe).

The micro-batches themselves never travel through the schedule: each stage module takes its
micro-batch from its ``feed`` in forward order (the same order on every stage), and the schedule
only moves the hidden states. The first stage receives the micro-batch index, the last stage
returns the (already scaled) loss, so the schedule's loss function is the identity and gradients
are not rescaled by it.

The tensors exchanged between stages have fixed shapes (hidden states of a micro-batch padded to
``seq_length``; visual rows padded to a bound, see ``EngineStage``), found once by a probe: the
first micro-batch runs forward through the stages in order (real values, no grad), and the stages
are then built with static shapes, so the schedule never runs a forward on placeholder values.

Each stage gives every received input that requires grad a gradient, zeros where it has none
(``pipeline_grads.grad_anchor``): the index and row count, a frozen stage, a text-only
micro-batch. torch 2.11's schedule refuses to send a None gradient; later releases send zeros.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

from mm_core.engine.mesh import Parallel
from mm_core.engine.model_setup import EngineStage


def _identity_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return output.sum()


def probe_shapes(stages: list[EngineStage], indices: list[int], num_stages: int, par: Parallel
                 ) -> dict[int, tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]]:
    """Example (inputs, outputs) of each of this rank's stages, from a real forward of micro-batch 0.

    Every rank walks the stages in order; the owner of stage s runs it and hands its output to the
    owner of stage s + 1 (same rank: directly; else point to point over the pp group).
    """
    group = par.group("pp")
    ranks = dist.get_process_group_ranks(group)
    mine = dict(zip(indices, stages))
    examples = {}
    carried: tuple[torch.Tensor, ...] | None = None
    index = torch.zeros(1, device=par.device)
    for s in range(num_stages):
        owner, nxt = s % par.pp, (s + 1) % par.pp
        if s in mine:
            inputs = (index,) if s == 0 else carried
            with torch.no_grad():
                out = mine[s](*inputs)
            outputs = out if isinstance(out, tuple) else (out,)
            examples[s] = (inputs, outputs)
            if s + 1 < num_stages:
                if nxt == owner:
                    carried = tuple(t.detach() for t in outputs)
                else:
                    dist.send_object_list([[t.detach().cpu() for t in outputs]], dst=ranks[nxt], group=group)
        elif s + 1 < num_stages and nxt == par.pp_rank and s + 1 in mine:
            box: list = [None]
            dist.recv_object_list(box, src=ranks[owner], group=group)
            carried = tuple(t.to(par.device) for t in box[0])
    return examples


def _example(t: torch.Tensor) -> torch.Tensor:
    x = torch.zeros_like(t)
    return x.requires_grad_(t.is_floating_point() and t.numel() > 1)


class PipelineRunner:
    """Runs one step's micro-batches through this rank's stages."""

    def __init__(self, stages: list[EngineStage], indices: list[int], num_stages: int, par: Parallel,
                 schedule: str, n_microbatches: int, probe_feed: list):
        self.par = par
        self.n = n_microbatches
        for m in stages:
            m.set_feed(probe_feed)
        examples = probe_shapes(stages, indices, num_stages, par)
        self.stages = [PipelineStage(m, i, num_stages, par.device,
                                     input_args=tuple(_example(t) for t in examples[i][0]),
                                     output_args=tuple(_example(t) for t in examples[i][1]),
                                     group=par.group("pp"))
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
