"""The demo's settings: data sizes, the tiny model's shape and the finetune config it runs.

The finetune config is an ordinary `mm-run finetune` YAML (examples/demo/finetune_tiny.yaml is
this file for the default settings); the demo writes it into the work directory and passes it
with ``--config``, so what trains is exactly what a user would run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TinyModel:
    """A Qwen2.5-VL-architecture model small enough to train on two CPU cores in minutes.

    The vocabulary is the real Qwen one (151665 tokens, rounded up to 151680), tied with the
    LM head so the largest matrix exists once. ``rope_theta`` is small because the decoder's
    multimodal rotary gives the image rows and columns only its lowest frequencies: with
    Qwen's 1e6 and a 16-dim head they would hardly turn across a 4x4 token grid, and the model
    could not tell left from right.
    """

    hidden: int = 64
    text_layers: int = 3
    heads: int = 4
    kv_heads: int = 2
    vision_depth: int = 3
    vit_hidden: int = 64
    vit_heads: int = 2
    rope_theta: float = 10.0
    init_std: float = 0.1  # ~1/sqrt(hidden): HF's 0.02 is for wide models and leaves a tiny one stuck
    seed: int = 0
    family: str = "qwen2_5_vl"  # the registered model whose ``tiny_checkpoint`` writes the model

    def save_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the family's ``tiny_checkpoint`` (mm-qwen's ``save_tiny_model``)."""
        head_dim = self.hidden // self.heads
        q = head_dim // 2
        section = [q - 2 * (q // 3), q // 3, q // 3]
        return {"tied": True, "with_processor": True, "seed": self.seed, "std": self.init_std,
                "hidden": self.hidden, "text_layers": self.text_layers, "heads": self.heads,
                "kv_heads": self.kv_heads, "vision_depth": self.vision_depth, "vit_hidden": self.vit_hidden,
                "vit_heads": self.vit_heads, "fullatt_block_indexes": (self.vision_depth - 1,),
                "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta,
                                    "mrope_section": section}}


@dataclass
class DemoSettings:
    """Everything `mm-run demo` can be told; the defaults are the full demo."""

    workdir: Path = Path("mm-demo")
    train_images: int = 1200  # three questions each
    eval_images: int = 100
    image_size: int = 112  # 8x8 patches of 14 pixels -> 16 image tokens after the 2x2 merge
    steps: int = 600  # ~98-100% held-out accuracy; 750 reaches 100% in ~1.2x the time
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0
    max_new_tokens: int = 4
    hf_check_limit: int | None = None  # questions the transformers reload answers (None: all)
    num_workers: int = 1
    model: TinyModel = field(default_factory=TinyModel)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["workdir"] = str(self.workdir)
        return d


@dataclass(frozen=True)
class DemoPaths:
    """Where every step reads and writes, under the work directory."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def hf_init(self) -> Path:
        return self.root / "hf_init"

    @property
    def mm_init(self) -> Path:
        return self.root / "mm_init"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def hf_trained(self) -> Path:
        return self.root / "hf_trained"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def finetune_yaml(self) -> Path:
        return self.root / "finetune.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def plot(self) -> Path:
        return self.root / "demo.png"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"


def finetune_config(s: DemoSettings, p: DemoPaths) -> dict[str, Any]:
    """The `mm-run finetune` config of the demo (paths relative to the work directory)."""
    pixels = s.image_size * s.image_size
    rel = lambda path: str(path.relative_to(p.root))  # noqa: E731 - the demo runs commands in the workdir
    return {
        "model": {"hf_dir": rel(p.hf_init), "mm_dir": rel(p.mm_init)},
        "data": {
            "source": "mllm",
            "config": {
                "preprocess_parameters": {"model_name_or_path": rel(p.hf_init), "image_max_pixels": pixels,
                                          "image_min_pixels": min(pixels, 3136)},
                "basic_parameters": {"template": "qwen2vl", "dataset_dir": rel(p.data), "dataset": "train.json",
                                     "cache_dir": "cache"},
                "dataloader_param": {"num_workers": s.num_workers, "shuffle": True},
            },
        },
        "parallel": {"tp": 1, "pp": 1, "device": "cpu"},
        "training": {"micro_batch_size": s.batch_size, "global_batch_size": s.batch_size, "seq_length": 128,
                     "train_iters": s.steps, "lr": s.lr, "min_lr": s.lr / 20, "lr_schedule": "cosine",
                     "warmup_iters": max(1, s.steps // 15), "weight_decay": 0.0, "clip_grad": 1.0,
                     "dtype": "fp32", "seed": s.seed, "loss_type": "default"},
        "output": {"save": rel(p.checkpoints), "save_interval": 0, "log_interval": 1,
                   "metrics_file": rel(p.metrics), "progress_bar": True},
    }
