"""Micro-batches for one data-parallel rank, one gradient-accumulation window at a time.

The position is counted in samples of the global batch, so a run resumes on another layout at
the same place. ``synthetic`` generates deterministic samples (by index) for tests and benchmarks;
``mllm`` uses the data pipeline (``mm_core.data``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mm_core.batch import IGNORE_INDEX, Batch
from mm_core.data.packing import pack_rows
from mm_core.engine.config import FinetuneConfig, Layout
from mm_core.errors import ConfigError
from mm_core.family.hf_config import text_config, vision_config


class SyntheticData:
    """Random token rows with a prompt (no loss), an optional image and an answer (loss)."""

    def __init__(self, cfg: FinetuneConfig, layout: Layout, dp_rank: int, hf_config: dict[str, Any]):
        d, t = cfg.data, cfg.training
        self.cfg, self.layout, self.dp_rank, self.hf_config = cfg, layout, dp_rank, hf_config
        self.vocab = int(text_config(hf_config)["vocab_size"])
        self.image_token = int(hf_config.get("image_token_id", 3))
        special = [int(hf_config[k]) for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                                "vision_end_token_id") if int(hf_config.get(k) or 0) > 4]
        self.high = min([self.vocab, *special])  # random text ids stay below the special tokens
        start, end = hf_config.get("vision_start_token_id"), hf_config.get("vision_end_token_id")
        self.wrap = [int(start), int(end)] if start is not None and end is not None else []
        vc = vision_config(hf_config, required=False)
        patch = vc.get("patch_size", 14)
        self.patch = int(patch[0] if isinstance(patch, (list, tuple)) else patch)  # InternVL writes [14, 14]
        self.patch_dim = int(vc.get("patch_dim", vc.get("in_channels", 3) * vc.get("temporal_patch_size", 2)
                                    * self.patch ** 2))
        self.merge = int(vc.get("spatial_merge_size", 1))
        self.n = d.synthetic_samples
        self.seed = t.seed
        self.consumed = 0  # global samples consumed
        self.family_image = _family_image(cfg, hf_config)
        if self.family_image is not None and d.synthetic_image_tokens and not d.synthetic_image_size:
            raise ConfigError("data.synthetic_image_tokens: this model makes its own synthetic images; "
                              "give data.synthetic_image_size instead")

    def sample(self, index: int) -> dict[str, torch.Tensor]:
        d = self.cfg.data
        epoch, i = divmod(index, self.n)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)) \
            if d.shuffle else torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 100003 + int(perm[i]))
        length = _text_length(d.synthetic_min_len, d.synthetic_max_len, d.synthetic_lengths, g)
        ids = torch.randint(4, self.high, (length,), generator=g)
        labels = ids.clone()
        prompt = int(torch.randint(1, max(2, length // 2), (1,), generator=g))
        labels[:prompt] = IGNORE_INDEX
        every = d.synthetic_text_only_every
        with_image = not (every and int(perm[i]) % every == 0)
        out: dict[str, torch.Tensor] = {}
        if with_image and self.family_image is not None and d.synthetic_image_size:
            images = [self.family_image(self.hf_config, d.synthetic_image_size, g) for _ in range(d.synthetic_images)]
            media = torch.cat([ids for ids, _ in images]).long()
            ids = torch.cat([ids[:1], media, ids[1:]])
            labels = torch.cat([labels[:1], torch.full((len(media),), IGNORE_INDEX), labels[1:]])
            out.update({k: torch.cat([m[k] for _, m in images]) for k in images[0][1]})
        elif with_image and (d.synthetic_image_size or d.synthetic_image_tokens):
            if d.synthetic_image_size:  # square images: a side of size / patch patches
                side = d.synthetic_image_size // self.patch
                grids = [[1, side, side]] * d.synthetic_images
            else:  # a strip of patches giving synthetic_image_tokens tokens
                grids = [[1, self.merge, d.synthetic_image_tokens * self.merge]]
            blocks = []  # each image as <vision_start> image tokens <vision_end> (when the model has them)
            for _, h, w in grids:
                n = h * w // self.merge ** 2
                blocks += [torch.tensor(self.wrap[:1]), torch.full((n,), self.image_token), torch.tensor(self.wrap[1:])]
            media = torch.cat(blocks).long()
            ids = torch.cat([ids[:1], media, ids[1:]])
            labels = torch.cat([labels[:1], torch.full((len(media),), IGNORE_INDEX), labels[1:]])
            patches = sum(t * h * w for t, h, w in grids)
            out["pixel_values"] = torch.randn(patches, self.patch_dim, generator=g)
            out["image_grid_thw"] = torch.tensor(grids)
        labels[0] = IGNORE_INDEX
        out["input_ids"], out["labels"] = ids, labels
        return out

    def _rows(self, samples: list[dict[str, torch.Tensor]]) -> list[list[int]]:
        """One row per sample, or (``synthetic_packing``) the samples packed into rows of ``seq_length``."""
        if not self.cfg.data.synthetic_packing:
            return [[i] for i in range(len(samples))]
        lengths = [s["input_ids"].numel() for s in samples]
        cap = self.cfg.training.seq_length
        if max(lengths) > cap:
            raise ConfigError(f"data.synthetic_packing: a sample of {max(lengths)} tokens (text up to "
                              f"data.synthetic_max_len plus its images) does not fit a row of training.seq_length "
                              f"{cap}; raise training.seq_length or lower data.synthetic_max_len")
        return pack_rows(lengths, cap)

    def _collate(self, samples: list[dict[str, torch.Tensor]]) -> Batch:
        rows = self._rows(samples)
        width = max(sum(samples[i]["input_ids"].numel() for i in row) for row in rows)
        samples = [samples[i] for row in rows for i in row]  # media follow the tokens' order
        lengths = [s["input_ids"].numel() for s in samples]
        b = len(rows)
        ids = torch.zeros(b, width, dtype=torch.long)
        labels = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
        seg = torch.full((b, width), -1, dtype=torch.long)
        at = 0  # the next sample, in row order
        for r, row in enumerate(rows):
            col = 0
            for number in range(len(row)):  # positions restart and attention stays within each sample
                s, n = samples[at], lengths[at]
                ids[r, col:col + n], labels[r, col:col + n], seg[r, col:col + n] = s["input_ids"], s["labels"], number
                col, at = col + n, at + 1
        pix = [s["pixel_values"] for s in samples if "pixel_values" in s]
        batch: Batch = {"input_ids": ids, "labels": labels, "attention_mask": (seg >= 0).long(),
                        "segment_ids": seg, "num_samples": torch.tensor(len(samples))}
        if pix:
            media_keys = {k for s in samples for k in s if k not in ("input_ids", "labels")}
            for key in sorted(media_keys):
                batch[key] = torch.cat([s[key] for s in samples if key in s])
            batch["dummy_vision"] = torch.tensor(False)
        elif self.family_image is not None:  # the family's smallest image, its features added times 0
            _, media = self.family_image(self.hf_config, 0, torch.Generator().manual_seed(0))
            batch.update({k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in media.items()})
            batch["dummy_vision"] = torch.tensor(True)
        else:
            batch["pixel_values"] = torch.zeros(self.merge * self.merge, self.patch_dim)
            batch["image_grid_thw"] = torch.tensor([[1, self.merge, self.merge]])
            batch["dummy_vision"] = torch.tensor(True)
        return batch

    def next_window(self) -> list[Batch]:
        """This rank's micro-batches of the next global batch."""
        t, lay = self.cfg.training, self.layout
        per_rank = t.global_batch_size // lay.dp
        base = self.consumed + self.dp_rank * per_rank
        self.consumed += t.global_batch_size
        mbs = t.micro_batch_size
        return [self._collate([self.sample(base + k * mbs + j) for j in range(mbs)]) for k in range(lay.grad_accum)]

    def steps_per_epoch(self) -> int:
        return max(1, self.n // self.cfg.training.global_batch_size)

    def state_dict(self) -> dict[str, Any]:
        return {"consumed_samples": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consumed = int(state["consumed_samples"])


def _text_length(low: int, high: int, mix: str, g: torch.Generator) -> int:
    """A sample's text length in ``[low, high]``: uniform, or log-normal around the geometric mean
    (sigma a quarter of the range's log width, so about 95% fall inside before clipping)."""
    if mix == "uniform" or low >= high:
        return int(torch.randint(low, high + 1, (1,), generator=g))
    if mix != "lognormal":
        raise ConfigError(f"data.synthetic_lengths: unknown value '{mix}'; valid: uniform, lognormal")
    mu, sigma = math.log(math.sqrt(low * high)), math.log(high / low) / 4
    drawn = float(torch.empty(1).log_normal_(mu, sigma, generator=g))
    return min(high, max(low, round(drawn)))


def _family_image(cfg: FinetuneConfig, hf_config: dict[str, Any]) -> Any:
    """The model family's synthetic-image maker (``ModelSpec.synthetic_image``), or None."""
    from mm_core.engine.model_setup import resolve_spec

    return resolve_spec(cfg, hf_config).synthetic_image


def padded_length(longest: int, multiple: int, limit: int) -> int:
    """``longest`` rounded up to ``multiple`` (at most ``limit``, never below ``longest``)."""
    return max(longest, min(limit, -(-longest // multiple) * multiple))


def pad_batch(batch: Batch, length: int, pad_token_id: int = 0) -> Batch:
    """Right-pad a micro-batch's token tensors to ``length``."""
    t = batch["input_ids"].shape[1]
    if t >= length:
        return batch
    fill = {"input_ids": pad_token_id, "labels": IGNORE_INDEX, "attention_mask": 0, "segment_ids": -1}
    out = dict(batch)
    for key, value in fill.items():
        if key in batch:
            x = batch[key]
            out[key] = torch.cat([x, x.new_full((x.shape[0], length - t), value)], dim=1)
    return out  # type: ignore[return-value]


class PipelineData:
    """The data pipeline's loader (``mm_core.data.build_dataloader``) for one data-parallel rank.

    A step takes the next ``grad_accum`` micro-batches (the whole window is read before the first
    forward, which ``per_token_loss`` needs). The loader's position is saved per data rank; a run
    resumes it on the same data-parallel size, or map-style on another one with the same global
    batch (from every saved rank's position, ``dp_states``; the loader explains what it refuses).
    """

    def __init__(self, cfg: FinetuneConfig, layout: Layout, dp_rank: int, hf_config: dict[str, Any]):
        from mm_core.data import build_dataloader
        from mm_core.data.config import load_data_config, with_model_dir
        from mm_core.engine.model_setup import resolve_spec

        t = cfg.training
        data_cfg = load_data_config(cfg.data.config if cfg.data.config is not None else cfg.data.data_json)
        data_cfg = with_model_dir(data_cfg, cfg.model.hf_dir)  # tokenizer + processor
        self.loader = build_dataloader(data_cfg, seq_len=t.seq_length, micro_batch_size=t.micro_batch_size,
                                       dp_rank=dp_rank, dp_size=layout.dp, seed=t.seed, grad_accum=layout.grad_accum,
                                       model=resolve_spec(cfg, hf_config))
        self.grad_accum = layout.grad_accum

    def next_window(self) -> list[Batch]:
        return [next(self.loader) for _ in range(self.grad_accum)]

    def steps_per_epoch(self) -> int:
        if self.loader.streaming:
            raise ConfigError("training.epochs: a streaming dataset has no known length; give training.train_iters")
        return max(1, len(self.loader.plan(0)) // self.grad_accum)

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dp_states = state.get("dp_states")  # from a checkpoint: every saved data rank's state
        self.loader.load_state_dict(dp_states if dp_states else {k: v for k, v in state.items() if k != "dp_states"})


def build_data(cfg: FinetuneConfig, layout: Layout, dp_rank: int, hf_config: dict[str, Any]):
    if cfg.data.source == "synthetic":
        return SyntheticData(cfg, layout, dp_rank, hf_config)
    return PipelineData(cfg, layout, dp_rank, hf_config)
