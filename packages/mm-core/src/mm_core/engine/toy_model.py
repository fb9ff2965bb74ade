"""A tiny vision-language model with the family interface, for engine tests and benchmarks.

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

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mm_core.kernels.reference import attention, rms_norm
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


def _flat(hf_config: dict[str, Any]) -> dict[str, Any]:
    cfg = {**DEFAULT_CONFIG, **dict(hf_config)}
    vc = {**DEFAULT_CONFIG["vision_config"], **cfg["vision_config"]}
    return {**cfg, "vision_hidden": vc["hidden_size"], "patch_dim": vc["patch_dim"], "vision_layers": vc["depth"],
            "num_heads": cfg["num_attention_heads"], "num_layers": cfg["num_hidden_layers"]}


def stage_range(counts: list[int], stage: int) -> tuple[int, int]:
    """Global [start, end) of a stage's layers from per-stage counts."""
    start = sum(counts[:stage])
    return start, start + counts[stage]


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

    def __init__(self, cfg: dict[str, Any], vit_pp_layers: list[int], llm_pp_layers: list[int], pp_rank: int):
        super().__init__()
        self.cfg = cfg
        vit_stages = [i for i, n in enumerate(vit_pp_layers) if n]
        llm_stages = [i for i, n in enumerate(llm_pp_layers) if n]
        self.vit_first, self.vit_last = vit_stages[0], vit_stages[-1]
        self.llm_first, self.llm_last = llm_stages[0], llm_stages[-1]
        self.has_vision = self.vit_first <= pp_rank <= self.vit_last
        self.has_text = self.llm_first <= pp_rank <= self.llm_last
        self.pp_rank = pp_rank
        if self.has_vision:
            self.image_encoder = ImageEncoder(cfg, vit_pp_layers[pp_rank], pp_rank == self.vit_first,
                                              pp_rank == self.vit_last)
        if self.has_text:
            self.text_decoder = TextDecoder(cfg, llm_pp_layers[pp_rank], pp_rank == self.llm_first,
                                            pp_rank == self.llm_last)

    def forward(self, *stage_input: torch.Tensor, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None, return_hidden: bool = False,
                dummy_vision: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        h = stage_input[0] if stage_input else None
        if self.has_vision:
            enc = self.image_encoder.encoder
            v = enc.patch_embed.proj(pixel_values) if self.pp_rank == self.vit_first else h
            for layer in enc.blocks.layers:
                v = layer(v)
            if self.pp_rank != self.vit_last:
                return v
            proj = self.image_encoder.projector
            v = proj.encoder(proj.layernorm(v))
            if dummy_vision is not None and bool(dummy_vision):
                v = v[:0] + 0.0 * v.sum()  # keep the graph (same collectives), contribute nothing
            if not self.has_text:
                return v
            h = v
        td = self.text_decoder
        if self.pp_rank == self.llm_first:
            emb = td.embedding.word_embeddings(input_ids)
            if h is not None and h.shape[0]:
                emb = emb.masked_scatter((input_ids == self.cfg["image_token_id"]).unsqueeze(-1), h.to(emb.dtype))
            elif h is not None:
                emb = emb + 0.0 * h.sum()
            h = emb
        for layer in td.decoder.layers:
            h = layer(h, segment_ids)
        if self.pp_rank == self.llm_last:
            h = td.decoder.final_layernorm(h)
            if not return_hidden:
                return td.output_layer(h)
        return h


def build_model(hf_config: dict[str, Any], *, vit_pp_layers: list[int], llm_pp_layers: list[int],
                pp_rank: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                ) -> ToyVLModel:
    """Build one stage; weights are random (the engine loads or initialises them)."""
    cfg = _flat(hf_config)
    with torch.device(device):
        model = ToyVLModel(cfg, list(vit_pp_layers), list(llm_pp_layers), pp_rank)
    return model.to(dtype)


def tp_plan(model: ToyVLModel) -> dict[str, Any]:
    """DTensor plan: column-parallel qkv/fc1, row-parallel proj/fc2 in the decoder layers."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    plan: dict[str, Any] = {}
    if getattr(model, "has_text", False):
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
