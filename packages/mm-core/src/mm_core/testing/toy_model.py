"""A tiny vision-language model with the family interface, for engine tests, benchmarks and the
plugin template (it needs no transformers class and no download).

It is shaped like a real family (a vision encoder + projector, then a decoder with an LM head),
uses the mm parameter names, builds one pipeline stage from ``vit_pp_layers``/``llm_pp_layers``
and carries a DTensor tensor-parallel plan, so the engine can be exercised without a real model.

Stage I/O follows mm_qwen's convention: ``model(*stage_input, **batch, return_hidden=True)`` with
the previous stage's output as the positional argument (none on the first stage). A stage that
ends inside the vision encoder returns vision hidden states ``[N, Hv]``; one that ends with the
projector returns the visual features ``[N, H]``; LLM stages return ``[B, T, H]`` (final-normed
on the last stage). The engine reads the LM head weight itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mm_core.kernels.reference import attention, rms_norm
from mm_core.layout import StagePlan, stage_plan
from mm_core.specs import ModelSpec

DEFAULT_CONFIG: dict[str, Any] = {  # HF-like keys, so generic config readers work on it
    "model_type": "mm_toy_vl",
    "vision_config": {"depth": 2, "hidden_size": 16, "patch_dim": 12},
    "hidden_size": 32,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "vocab_size": 64,
    "image_token_id": 3,
}


def _flat(hf_config: dict[str, Any] | str | Path) -> dict[str, Any]:
    if not isinstance(hf_config, dict):  # a config.json or an HF directory (what load_pretrained passes)
        path = Path(hf_config)
        hf_config = json.loads((path / "config.json" if path.is_dir() else path).read_text())
    cfg = {**DEFAULT_CONFIG, **dict(hf_config)}
    vc = {**DEFAULT_CONFIG["vision_config"], **cfg["vision_config"]}
    return {**cfg, "vision_hidden": vc["hidden_size"], "patch_dim": vc["patch_dim"], "vision_layers": vc["depth"],
            "num_heads": cfg["num_attention_heads"], "num_layers": cfg["num_hidden_layers"]}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class MLP(nn.Module):
    def __init__(self, dim: int, inner: int, bias: bool):
        super().__init__()
        self.linear_fc1 = nn.Linear(dim, inner, bias=bias)
        self.linear_fc2 = nn.Linear(inner, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.gelu(self.linear_fc1(x)))


class VisionLayer(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.input_layernorm = RMSNorm(dim)
        self.mlp = MLP(dim, 2 * dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.input_layernorm(x))


class SelfAttention(nn.Module):
    """Per-head interleaved fused QKV so a contiguous tp split holds whole heads."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.head_dim = dim // heads
        self.linear_qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.linear_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, segment_ids: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = self.linear_qkv(x)
        heads = qkv.shape[-1] // (3 * self.head_dim)  # local heads under tensor parallel
        q, k, v = qkv.view(b, t, heads, 3, self.head_dim).permute(3, 0, 2, 1, 4)
        out = attention(q, k, v, causal=True, segment_ids=segment_ids)
        return self.linear_proj(out.transpose(1, 2).reshape(b, t, heads * self.head_dim))


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, inner: int):
        super().__init__()
        self.input_layernorm = RMSNorm(dim)
        self.self_attention = SelfAttention(dim, heads)
        self.pre_mlp_layernorm = RMSNorm(dim)
        self.mlp = MLP(dim, inner, bias=False)

    def forward(self, x: torch.Tensor, segment_ids: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attention(self.input_layernorm(x), segment_ids)
        return x + self.mlp(self.pre_mlp_layernorm(x))


class Layers(nn.Module):
    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)


class VisionEncoder(nn.Module):
    def __init__(self, cfg: dict[str, Any], n_layers: int, first: bool):
        super().__init__()
        if first:
            self.patch_embed = nn.Module()
            self.patch_embed.proj = nn.Linear(cfg["patch_dim"], cfg["vision_hidden"], bias=False)
        self.blocks = Layers([VisionLayer(cfg["vision_hidden"]) for _ in range(n_layers)])


class Projector(nn.Module):
    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        self.layernorm = RMSNorm(cfg["vision_hidden"])
        self.encoder = MLP(cfg["vision_hidden"], cfg["hidden_size"], bias=True)
        self.encoder.linear_fc2 = nn.Linear(cfg["hidden_size"], cfg["hidden_size"], bias=True)


class ImageEncoder(nn.Module):
    def __init__(self, cfg: dict[str, Any], n_layers: int, first: bool, last: bool):
        super().__init__()
        self.encoder = VisionEncoder(cfg, n_layers, first)
        if last:
            self.projector = Projector(cfg)


class TextDecoder(nn.Module):
    def __init__(self, cfg: dict[str, Any], n_layers: int, first: bool, last: bool):
        super().__init__()
        if first:
            self.embedding = nn.Module()
            self.embedding.word_embeddings = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.decoder = nn.Module()
        self.decoder.layers = nn.ModuleList(
            DecoderLayer(cfg["hidden_size"], cfg["num_heads"], cfg["intermediate_size"]) for _ in range(n_layers)
        )
        if last:
            self.decoder.final_layernorm = RMSNorm(cfg["hidden_size"])
            self.output_layer = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)


class ToyVLModel(nn.Module):
    """One pipeline stage (or the whole model) of the toy vision-language model."""

    supports_sequence_parallel = False  # mm_core.contracts.StageModel: its tp_plan has no sequence regions

    def __init__(self, cfg: dict[str, Any], plan: StagePlan):
        super().__init__()
        self.cfg = cfg
        self.plan = plan
        if plan.has_vision:
            self.image_encoder = ImageEncoder(cfg, plan.vit_count, plan.patch_embed, plan.projector)
        if plan.has_text:
            self.text_decoder = TextDecoder(cfg, plan.llm_count, plan.embedding, plan.head)

    def output_weight(self) -> torch.Tensor:
        """The LM head weight ``[V, H]`` (last stage only), for a chunked loss or generation."""
        if not self.plan.head:
            raise RuntimeError(f"pipeline stage {self.plan.stage} holds no output layer")
        return self.text_decoder.output_layer.weight

    def aux_losses(self) -> list[torch.Tensor]:
        return []  # dense

    def forward(self, *stage_input: torch.Tensor, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None, return_hidden: bool = False,
                dummy_vision: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        plan = self.plan
        h = stage_input[0] if stage_input else None
        if plan.has_vision:
            enc = self.image_encoder.encoder
            if plan.patch_embed:
                if pixel_values is None:
                    pixel_values = torch.zeros(0, self.cfg["patch_dim"], device=input_ids.device)
                v = enc.patch_embed.proj(pixel_values)
            else:
                v = h
            for layer in enc.blocks.layers:
                v = layer(v)
            if not plan.projector:
                return v
            proj = self.image_encoder.projector
            v = proj.encoder(proj.layernorm(v))
            if dummy_vision is not None and bool(dummy_vision):
                v = v[:0] + 0.0 * v.sum()  # keep the graph (same collectives), contribute nothing
            if not plan.has_text:
                return v
            h = v
        td = self.text_decoder
        if plan.embedding:
            emb = td.embedding.word_embeddings(input_ids)
            if h is not None and h.shape[0]:
                emb = emb.masked_scatter((input_ids == self.cfg["image_token_id"]).unsqueeze(-1), h.to(emb.dtype))
            elif h is not None:
                emb = emb + 0.0 * h.sum()
            h = emb
        for layer in td.decoder.layers:
            h = layer(h, segment_ids)
        if plan.head:
            h = td.decoder.final_layernorm(h)
            if not return_hidden:
                return td.output_layer(h)
        return h


def build_model(hf_config: dict[str, Any] | str | Path, *, vit_pp_layers: list[Any] | None = None,
                llm_pp_layers: list[Any] | None = None, pp_rank: int = 0, device: str | torch.device = "cpu",
                dtype: torch.dtype | None = torch.float32) -> ToyVLModel:
    """Build one flattened stage (the whole model without layer lists); weights are random."""
    cfg = _flat(hf_config)
    plan = stage_plan(cfg["vision_layers"], cfg["num_layers"], vit_pp_layers, llm_pp_layers, pp_rank)
    with torch.device(device):
        model = ToyVLModel(cfg, plan)
    return model.to(dtype or torch.float32)


def tp_plan(model: ToyVLModel) -> dict[str, Any]:
    """DTensor plan: column-parallel qkv/fc1, row-parallel proj/fc2 in the decoder layers."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    plan: dict[str, Any] = {}
    if model.plan.has_text:
        for i in range(len(model.text_decoder.decoder.layers)):
            p = f"text_decoder.decoder.layers.{i}"
            plan[f"{p}.self_attention.linear_qkv"] = ColwiseParallel()
            plan[f"{p}.self_attention.linear_proj"] = RowwiseParallel()
            plan[f"{p}.mlp.linear_fc1"] = ColwiseParallel()
            plan[f"{p}.mlp.linear_fc2"] = RowwiseParallel()
    return plan


TOY_SPEC = ModelSpec(
    name="mm_toy_vl",
    builder=build_model,
    hf_model_types=("mm_toy_vl",),
    module_groups={
        "vision_encoder": ("image_encoder.encoder",),
        "vision_projector": ("image_encoder.projector",),
        "text_decoder": ("text_decoder",),
    },
    tp_plan=tp_plan,
    pipeline_modules=("image_encoder", "text_decoder"),
    description="tiny vision-language model for engine tests",
)
