"""The training loop: one process or tp x pp x cp x dp, gradient accumulation, clipping, checkpoints."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mm_core.engine.checkpoint import iter_dir, latest_iteration, load_checkpoint, save_checkpoint
from mm_core.engine.config import FinetuneConfig, load_hf_config, validate
from mm_core.engine.context_parallel import ContextParallel, cp_multiple
from mm_core.engine.data import build_data, pad_batch, padded_length
from mm_core.engine.expert_load import step_expert_load
from mm_core.engine.expert_parallel import reduce_expert_grads
from mm_core.engine.loss import LossComputer, prepare_window
from mm_core.engine.mesh import build_mesh, init_distributed, shutdown  # noqa: F401  (shutdown: re-exported)
from mm_core.engine.metrics import MetricsLogger, peak_flops, peak_memory_gb
from mm_core.engine.model_setup import EMBEDDING, OUTPUT_LAYER, build_stages, resolve_spec
from mm_core.engine.optim import LRSchedule, build_optimizer, clip_grad_norm
from mm_core.engine.pipeline import PipelineRunner
from mm_core.engine.run_header import run_header
from mm_core.engine.step_samples import samples_note, samples_summary
from mm_core.family.hf_config import is_tied, text_config


class TiedHead:
    """A tied model whose word embedding and LM head copy sit on different pipeline stages: after
    backward, the two copies' gradient shards are summed (one small group per (dp, tp) position),
    so both copies stay equal, like the single tied weight of one process."""

    def __init__(self, stages: list, layout, par):
        llm = [i for i, n in enumerate(layout.llm_pp_layers) if n]
        first, last = llm[0], llm[-1]
        self.emb = [m.model.get_parameter(f"{EMBEDDING}.weight") for m in stages if m.stage == first]
        self.head = [m.model.get_parameter(f"{OUTPUT_LAYER}.weight") for m in stages if m.stage == last]
        self.group = None
        ranks = par.mesh.mesh  # [pp, dp, cp, tp] global ranks
        a, b = first % par.pp, last % par.pp
        if a != b:
            for d in range(par.dp):  # every rank creates every group, in the same order
                for c in range(par.cp):
                    for t in range(par.tp):
                        pair = sorted({int(ranks[a, d, c, t]), int(ranks[b, d, c, t])})
                        g = dist.new_group(pair)
                        if par.rank in pair:
                            self.group = g

    def head_params(self) -> list:
        return self.head

    def sync_grads(self) -> None:
        mine = [p for p in self.emb + self.head if p.grad is not None]
        if self.group is None:  # both copies on this rank (virtual chunks)
            if len(mine) == 2:
                total = mine[0].grad + mine[1].grad
                for p in mine:
                    p.grad.copy_(total)
            return
        for p in mine:
            g = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
            dist.all_reduce(g, group=self.group)


def _resume_path(cfg: FinetuneConfig) -> Path | None:
    o = cfg.output
    if o.load is None:
        return None
    it = o.load_iteration if o.load_iteration is not None else latest_iteration(o.load)
    if it is None:
        return None  # nothing saved yet: a fresh start
    path = Path(o.load) / "release" if it == "release" else iter_dir(o.load, it)
    if not path.is_dir():
        raise FileNotFoundError(f"output.load: checkpoint '{path}' does not exist")
    return path


class Trainer:
    """Holds everything of one run; ``train()`` returns the per-step records."""

    def __init__(self, cfg: FinetuneConfig, config_yaml: str | None = None):
        self.cfg, self.config_yaml = cfg, config_yaml
        t = cfg.training
        device_type, _, world = init_distributed(cfg.parallel.device)
        self.hf_config = load_hf_config(cfg)
        self.layout = validate(cfg, world, self.hf_config)
        self.par = build_mesh(device_type, self.layout.pp, self.layout.tp, self.layout.cp, cfg.parallel.ep)
        torch.manual_seed(t.seed)
        self.spec = resolve_spec(cfg, self.hf_config)
        self.stages = build_stages(cfg, self.layout, self.par, self.spec, self.hf_config)
        self.cp = None
        if self.layout.cp > 1:  # the text decoder's sequence split over cp ranks
            self.cp = ContextParallel(self.par.group("cp"), self.par.cp, self.par.cp_rank)
            for m in self.stages.modules:
                self.cp.install(m.model, f"model '{self.spec.name}'")
        from mm_core.plugins import get_plugin_manager

        self.loss_spec = get_plugin_manager().loss(t.loss_type)
        computer = LossComputer(t.compute_mode, t.chunk_size, t.router_aux_loss_coef)
        for m in self.stages.modules:
            m.loss_fn = computer
        self.optimizers = [build_optimizer(m, t) for m in self.stages.modules]
        self.data = build_data(cfg, self.layout, self.par.dp_rank, self.hf_config)
        self.total_steps = t.train_iters if t.train_iters is not None else t.epochs * self.data.steps_per_epoch()
        self.schedule = LRSchedule(t, self.total_steps)
        self.step = 0
        path = _resume_path(cfg)
        self.resumed_from = path
        if path is not None:
            state = load_checkpoint(path, self.stages.modules, self.optimizers, self.par.dp_rank)
            self.step = int(state["train"].get("step", 0))
            if state["data"]:
                self.data.load_state_dict(state["data"])
        self.tied = TiedHead(self.stages.modules, self.layout, self.par) \
            if is_tied(self.hf_config) and self.layout.num_stages > 1 else None
        # pp: one schedule per padded sequence length, built when first needed (its shape probe needs data)
        self.runners: dict[tuple[int, ...], PipelineRunner] = {}
        self.pad_id = int(self.hf_config.get("pad_token_id") or text_config(self.hf_config).get("pad_token_id") or 0)
        # whole-model parameter count (DTensor numel is global; stages summed over the pipeline)
        n = torch.tensor([float(sum(p.numel() for m in self.stages.modules for p in m.parameters()))],
                         dtype=torch.float64)
        if self.par.pp > 1:
            dist.all_reduce(n, group=self.par.group("pp"))
        self.n_params = int(n.item())

    def _forward_backward(self, mbs: list) -> None:
        if self.layout.pp > 1:
            shape = tuple(mbs[0].batch["input_ids"].shape)
            for m in self.stages.modules:
                m.max_rows = 4 * shape[0] * shape[1]
            if shape not in self.runners:
                self.runners[shape] = PipelineRunner(self.stages.modules, self.stages.indices, self.layout.num_stages,
                                                     self.par, self.cfg.parallel.pp_schedule, self.layout.grad_accum,
                                                     mbs)
            for m in self.stages.modules:
                m.set_feed(mbs)
            self.runners[shape].step()
            return
        for m in self.stages.modules:
            m.set_feed(mbs)
        stage = self.stages.modules[0]
        for i in range(len(mbs)):
            stage.set_requires_gradient_sync(i == len(mbs) - 1)  # reduce-scatter once, after the last
            loss = stage(torch.tensor([float(i)]))
            if loss.requires_grad:
                loss.sum().backward()

    def _pad_for_pipeline(self, window: list) -> list:
        """Stages exchange fixed shapes: every micro-batch of the step gets one length, the same on
        every data-parallel rank (their FSDP collectives must match) and one of few over a run."""
        longest = torch.tensor([max(b["input_ids"].shape[1] for b in window)], dtype=torch.float64)
        if self.par.dp > 1:
            dist.all_reduce(longest, op=dist.ReduceOp.MAX, group=self.par.group("dp"))
        length = padded_length(int(longest.item()), self.cfg.parallel.pp_pad_multiple, self.cfg.training.seq_length)
        return [pad_batch(b, length, self.pad_id) for b in window]

    def _reduce(self, values: list[float]) -> list[float]:
        """Sums over all ranks (the loss lives on the last stage; tp ranks hold copies)."""
        t = torch.tensor(values, dtype=torch.float64)
        if self.par.world_size > 1:
            dist.all_reduce(t)
        return t.tolist()

    def train_step(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        window = self.data.next_window()
        if self.layout.pp > 1:
            window = self._pad_for_pipeline(window)
        p = self.cfg.parallel
        if p.sequence_parallel or self.cp is not None:  # the sequence is sharded over tp and/or cp: pad it
            multiple = cp_multiple(self.par.cp, self.par.tp, p.sequence_parallel) if self.cp else self.par.tp
            window = [pad_batch(b, padded_length(b["input_ids"].shape[1], multiple, 1 << 62), self.pad_id)
                      for b in window]
        mbs = prepare_window(window, self.loss_spec, self.par.device, self.par.group("dp"), self.par.dp)
        if self.cp is not None:  # counted on the whole sequence above; each cp rank takes its chunks
            self.cp.split_micro_batches(mbs)
        lr = self.schedule.apply(self.optimizers, self.step)
        self._forward_backward(mbs)
        if self.cfg.parallel.ep > 1:  # experts: summed over their replicas, FSDP2's mean over data ranks
            reduce_expert_grads(self.stages.modules)
        if self.tied is not None:
            self.tied.sync_grads()
        grad_norm = clip_grad_norm(self.stages.modules, self.cfg.training.clip_grad,
                                   self.par.group("pp") if self.par.pp > 1 else None, self.par.device,
                                   skip=self.tied.head_params() if self.tied is not None else ())
        for opt in self.optimizers:
            if opt is not None:
                opt.step()
                opt.zero_grad(set_to_none=True)
        last = self.par.is_last_stage_rank
        loss = float(sum(mb.stats.get("loss", 0.0) for mb in mbs)) if last else 0.0  # the step's one loss sync
        first_tp = self.par.tp_rank == 0 and self.par.cp_rank == 0 and last  # counted once per dp rank
        loss_tokens = sum(mb.valid_tokens for mb in mbs) if first_tp else 0
        samples = sum(mb.samples for mb in mbs) if first_tp else 0
        real_tokens = sum(mb.positions for mb in mbs) if first_tp else 0
        loss, loss_tokens, samples, real_tokens = self._reduce([loss, float(loss_tokens), float(samples),
                                                                float(real_tokens)])
        loss /= self.par.dp * self.par.tp  # cp ranks hold shares of the loss: their sum is it
        self.step += 1
        dt = time.perf_counter() - t0
        world = self.par.world_size
        # the headline is real (non-padding) input tokens; loss tokens are named as such (see metrics.py)
        rec = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "step_time_s": dt,
               "real_tokens_per_s": real_tokens / dt, "real_tokens_per_s_per_device": real_tokens / dt / world,
               "loss_tokens_per_s": loss_tokens / dt, "loss_tokens_per_s_per_device": loss_tokens / dt / world,
               "samples_per_s": samples / dt, "samples_per_s_per_device": samples / dt / world,
               "real_tokens": int(real_tokens), "loss_tokens": int(loss_tokens), "samples": int(samples),
               "peak_memory_gb": peak_memory_gb(self.par.device)}
        rec.update(step_expert_load(self.stages.modules, world, self.par.tp, self.par.device))  # MoE only
        peak = peak_flops(self.par.device)
        if peak:  # every position costs compute, not only those with a loss
            rec["mfu"] = 6.0 * self.n_params * real_tokens / dt / (peak * world)
        return rec

    def save(self) -> None:
        o = self.cfg.output
        save_checkpoint(o.save, self.step, self.stages.modules, self.optimizers,
                        {"step": self.step, "consumed_samples": self.data.state_dict().get("consumed_samples", 0)},
                        self.data.state_dict(), self.par.dp_rank, weights_only=o.save_weights_only,
                        keep_last=o.keep_last, config_yaml=self.config_yaml)

    def train(self, on_step: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
        """Run to the last step; ``on_step(step)`` is called after each step (and its save)."""
        o = self.cfg.output
        jsonl = o.metrics_file or (str(Path(o.save) / "metrics.jsonl") if o.save else None)
        header = run_header(self.cfg, self.par.world_size, self.step, self.resumed_from)
        samples = samples_summary(self.data, self.cfg)  # packing: a step holds other than global_batch_size
        if samples is not None:
            header["samples_per_step"] = samples
        note = samples_note(samples)
        logger = MetricsLogger(enabled=self.par.rank == 0, total_steps=self.total_steps, start_step=self.step,
                               log_interval=o.log_interval, jsonl=jsonl, tensorboard_dir=o.tensorboard_dir,
                               progress_bar=o.progress_bar, world_size=self.par.world_size,
                               header=header, notes=[note] if note else [])
        records = []
        try:
            while self.step < self.total_steps:
                rec = self.train_step()
                records.append({"step": self.step, **rec})
                logger.log(self.step, rec)
                if o.save and o.save_interval and self.step % o.save_interval == 0:
                    self.save()
                if on_step is not None:
                    on_step(self.step)
            if o.save and (not o.save_interval or self.step % o.save_interval):
                self.save()
        finally:
            logger.close()
        return records

