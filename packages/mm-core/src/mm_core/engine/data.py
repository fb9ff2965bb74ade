"""Micro-batches for one data-parallel rank, one gradient-accumulation window at a time.

The position is counted in samples of the global batch, so a run resumes on another layout at
the same place. ``synthetic`` generates deterministic samples (by index) for tests and benchmarks;
``mllm`` uses the data pipeline (``mm_core.data``).
"""

from __future__ import annotations

from typing import Any

import torch

from mm_core.batch import IGNORE_INDEX, Batch
from mm_core.engine.config import FinetuneConfig, Layout
from mm_core.errors import ConfigError


class SyntheticData:
    """Random token rows with a prompt (no loss), an optional image and an answer (loss)."""

    def __init__(self, cfg: FinetuneConfig, layout: Layout, dp_rank: int, hf_config: dict[str, Any]):
        d, t = cfg.data, cfg.training
        self.cfg, self.layout, self.dp_rank = cfg, layout, dp_rank
        self.vocab = int(hf_config.get("vocab_size") or hf_config.get("text_config", {}).get("vocab_size"))
        self.image_token = int(hf_config.get("image_token_id", 3))
        special = [int(hf_config[k]) for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                                "vision_end_token_id") if int(hf_config.get(k) or 0) > 4]
        self.high = min([self.vocab, *special])  # random text ids stay below the special tokens
        vc = hf_config.get("vision_config", {})
        self.patch_dim = int(vc.get("patch_dim", vc.get("in_channels", 3) * vc.get("temporal_patch_size", 2)
                                    * vc.get("patch_size", 14) ** 2))
        self.merge = int(vc.get("spatial_merge_size", 1))
        self.n = d.synthetic_samples
        self.seed = t.seed
        self.consumed = 0  # global samples consumed
        self.pad_to = t.seq_length if layout.pp > 1 else None  # pipeline stages exchange fixed shapes

    def sample(self, index: int) -> dict[str, torch.Tensor]:
        d = self.cfg.data
        epoch, i = divmod(index, self.n)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)) \
            if d.shuffle else torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 100003 + int(perm[i]))
        length = int(torch.randint(d.synthetic_min_len, d.synthetic_max_len + 1, (1,), generator=g))
        ids = torch.randint(4, self.high, (length,), generator=g)
        labels = ids.clone()
        prompt = int(torch.randint(1, max(2, length // 2), (1,), generator=g))
        labels[:prompt] = IGNORE_INDEX
        n_img = d.synthetic_image_tokens if int(perm[i]) % 2 == 0 else 0  # half the samples are text only
        out: dict[str, torch.Tensor] = {}
        if n_img:
            ids = torch.cat([ids[:1], torch.full((n_img,), self.image_token), ids[1:]])
            labels = torch.cat([labels[:1], torch.full((n_img,), IGNORE_INDEX), labels[1:]])
            patches = n_img * self.merge * self.merge
            out["pixel_values"] = torch.randn(patches, self.patch_dim, generator=g)
            out["image_grid_thw"] = torch.tensor([[1, self.merge, n_img * self.merge]])
        labels[0] = IGNORE_INDEX
        out["input_ids"], out["labels"] = ids, labels
        return out

    def _collate(self, samples: list[dict[str, torch.Tensor]]) -> Batch:
        width = self.pad_to or max(s["input_ids"].numel() for s in samples)
        b = len(samples)
        ids = torch.zeros(b, width, dtype=torch.long)
        labels = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
        seg = torch.full((b, width), -1, dtype=torch.long)
        for r, s in enumerate(samples):
            n = min(width, s["input_ids"].numel())
            ids[r, :n], labels[r, :n], seg[r, :n] = s["input_ids"][:n], s["labels"][:n], 0
        pix = [s["pixel_values"] for s in samples if "pixel_values" in s]
        batch: Batch = {"input_ids": ids, "labels": labels, "attention_mask": (seg >= 0).long(),
                        "segment_ids": seg, "num_samples": torch.tensor(b)}
        if pix:
            batch["pixel_values"] = torch.cat(pix)
            batch["image_grid_thw"] = torch.cat([s["image_grid_thw"] for s in samples if "image_grid_thw" in s])
            batch["dummy_vision"] = torch.tensor(False)
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


class PipelineData:
    """Adapter over the data pipeline's loader (``mm_core.data.build_dataloader``)."""

    def __init__(self, cfg: FinetuneConfig, layout: Layout, dp_rank: int, hf_config: dict[str, Any]):
        try:
            from mm_core.data import build_dataloader
        except ImportError as e:
            raise ConfigError(f"data.source 'mllm' needs the data pipeline mm_core.data ({e})") from None
        t = cfg.training
        self.loader = build_dataloader(cfg.data.config if cfg.data.config else cfg.data.data_json,
                                       micro_batch_size=t.micro_batch_size, seq_length=t.seq_length,
                                       dp_rank=dp_rank, dp_size=layout.dp, grad_accum=layout.grad_accum,
                                       seed=t.seed, hf_config=hf_config)
        self.grad_accum = layout.grad_accum
        self._it = iter(self.loader)

    def next_window(self) -> list[Batch]:
        out = []
        for _ in range(self.grad_accum):
            try:
                out.append(next(self._it))
            except StopIteration:
                self._it = iter(self.loader)
                out.append(next(self._it))
        return out

    def steps_per_epoch(self) -> int:
        return max(1, len(self.loader) // self.grad_accum)

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)
        self._it = iter(self.loader)


def build_data(cfg: FinetuneConfig, layout: Layout, dp_rank: int, hf_config: dict[str, Any]):
    if cfg.data.source == "synthetic":
        return SyntheticData(cfg, layout, dp_rank, hf_config)
    return PipelineData(cfg, layout, dp_rank, hf_config)
