"""GLM-4.1V's vision encoder and merger in the mm layout (numerics of transformers' ``Glm4vVisionModel``).

- stem (first vision stage): Conv3d patch embedding (with bias) as one matmul on the processor's
  flattened patches, ``post_conv_layernorm`` (RMSNorm), and the learned 24x24 position table
  resampled bicubically (``grid_sample``, border padding) to each image's patch grid;
- blocks: pre-norm RMSNorm, bidirectional attention within each frame with the fused ``qkv`` kept
  ``[Q; K; V]`` (mm-format: no interleave for GLM; a tp rank holds whole heads of each) and 2-D
  rotate-half rotary (height and width angles), SwiGLU MLP of width ``out_hidden_size``;
- tail (last vision stage): ``blocks.final_layernorm``, the 2x2 ``downsample`` conv to the LLM
  width, then the merger: Linear, LayerNorm, exact GELU, SwiGLU.

Patches arrive merge-block major (the processor's order), so each 2x2 block is 4 consecutive rows.
Images and videos go through as one patch sequence; every frame is its own attention segment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mm_core.nn import RMSNorm, SwiGLUMLP, apply_rotary, attention
from mm_glm.config import GlmConfig, VisionConfig


@dataclass
class VisionGeometry:
    """Per-batch tensors derived from the frame grids alone (no weights)."""

    grids: torch.Tensor  # [n_frames_or_images, 3]
    rows: torch.Tensor  # [N] patch row (height index) in its image
    cols: torch.Tensor  # [N] patch column
    cos: torch.Tensor  # [N, head_dim]
    sin: torch.Tensor
    segment_ids: torch.Tensor | None  # [1, N] one id per frame (None: a single frame)


def vision_geometry(grid_thw: torch.Tensor, cfg: VisionConfig, device: torch.device) -> VisionGeometry:
    """Patch coordinates (merge-block major), frame segments and rotary tables for a list of grids."""
    m = cfg.spatial_merge_size
    rows, cols, seg = [], [], []
    frame = 0
    for t, h, w in grid_thw.tolist():
        hh = torch.arange(h).view(h // m, m, 1, 1).expand(h // m, m, w // m, m).transpose(1, 2).flatten()
        ww = torch.arange(w).view(1, 1, w // m, m).expand(h // m, m, w // m, m).transpose(1, 2).flatten()
        rows.append(hh.repeat(t))
        cols.append(ww.repeat(t))
        seg.append(torch.arange(frame, frame + t).repeat_interleave(h * w))
        frame += t
    r, c = torch.cat(rows), torch.cat(cols)
    half = cfg.head_dim // 2
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, half, 2, dtype=torch.float32) / half))
    freqs = torch.cat([r.float()[:, None] * inv_freq, c.float()[:, None] * inv_freq], dim=-1)
    emb = torch.cat([freqs, freqs], dim=-1)
    return VisionGeometry(grids=grid_thw.to(device), rows=r.to(device), cols=c.to(device), cos=emb.cos().to(device),
                          sin=emb.sin().to(device), segment_ids=torch.cat(seg)[None].to(device) if frame > 1 else None)


class PatchEmbed(nn.Module):
    """Conv3d with stride = kernel (weight ``[C, 3, 2, 14, 14]`` + bias), as one matmul."""

    def __init__(self, cfg: VisionConfig, *, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Module()
        shape = (cfg.hidden_size, cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.proj.weight = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        self.proj.bias = nn.Parameter(torch.empty(cfg.hidden_size, device=device, dtype=dtype))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight
        return F.linear(pixels.to(weight.dtype), weight.reshape(weight.shape[0], -1), self.proj.bias)


class PositionEmbeddings(nn.Module):
    """``embeddings.position_embedding``: the learned square table, resampled to each image's grid."""

    def __init__(self, cfg: VisionConfig, *, device=None, dtype=None):
        super().__init__()
        self.position_embedding = nn.Embedding(cfg.position_side**2, cfg.hidden_size, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, geo: VisionGeometry) -> torch.Tensor:
        table = self.position_embedding.weight
        side = int(table.shape[0] ** 0.5)
        image = table.view(side, side, -1).permute(2, 0, 1).unsqueeze(0).float()  # [1, C, side, side]
        sizes = torch.repeat_interleave(geo.grids[:, 1:], geo.grids[:, 0], dim=0)  # [frames, (h, w)]
        per_frame = sizes.prod(-1)
        h = torch.repeat_interleave(sizes[:, 0], per_frame).float()
        w = torch.repeat_interleave(sizes[:, 1], per_frame).float()
        # the patch centre in [-1, 1] of its own grid (grid_sample's align_corners=False convention)
        grid = torch.stack(((geo.cols + 0.5) / w * 2 - 1, (geo.rows + 0.5) / h * 2 - 1), dim=-1)
        pos = F.grid_sample(image, grid.view(1, -1, 1, 2), mode="bicubic", align_corners=False, padding_mode="border")
        return x + pos.squeeze(0).squeeze(-1).t().to(table.dtype)


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig, *, device=None, dtype=None):
        super().__init__()
        self.head_dim = cfg.head_dim
        c = cfg.hidden_size
        self.qkv = nn.Linear(c, 3 * c, bias=cfg.attention_bias, device=device, dtype=dtype)
        self.proj = nn.Linear(c, c, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, geo: VisionGeometry) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = (y.reshape(n, -1, self.head_dim) for y in self.qkv(x).chunk(3, dim=-1))  # this rank's heads
        cos, sin = geo.cos.unsqueeze(1), geo.sin.unsqueeze(1)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = (y.transpose(0, 1).unsqueeze(0) for y in (q, k, v))  # [1, H, N, D]
        out = attention(q, k, v, causal=False, segment_ids=geo.segment_ids, scale=self.head_dim**-0.5)
        return self.proj(out.squeeze(0).transpose(0, 1).reshape(n, -1))


class VisionLayer(nn.Module):
    def __init__(self, cfg: VisionConfig, *, device=None, dtype=None):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.eps, device=device, dtype=dtype)
        self.self_attention = VisionAttention(cfg, device=device, dtype=dtype)
        self.pre_mlp_layernorm = RMSNorm(cfg.hidden_size, cfg.eps, device=device, dtype=dtype)
        self.mlp = SwiGLUMLP(cfg.hidden_size, cfg.out_hidden_size, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, geo: VisionGeometry) -> torch.Tensor:
        x = x + self.self_attention(self.input_layernorm(x), geo)
        return x + self.mlp(self.pre_mlp_layernorm(x))


class VisionBlocks(nn.Module):
    """``blocks.layers.N`` and, on the last vision stage, ``blocks.final_layernorm`` (the reference's names)."""

    def __init__(self, cfg: VisionConfig, count: int, with_final_norm: bool, *, device=None, dtype=None):
        super().__init__()
        self.layers = nn.ModuleList(VisionLayer(cfg, device=device, dtype=dtype) for _ in range(count))
        if with_final_norm:
            self.final_layernorm = RMSNorm(cfg.hidden_size, cfg.eps, device=device, dtype=dtype)


class VisionTransformer(nn.Module):
    """``image_encoder.encoder``: stem (first vision stage), this stage's blocks, tail (last)."""

    def __init__(self, cfg: VisionConfig, count: int, *, with_stem: bool, with_tail: bool, device=None, dtype=None):
        super().__init__()
        self.cfg = cfg
        if with_stem:
            self.patch_embed = PatchEmbed(cfg, device=device, dtype=dtype)
            self.post_conv_layernorm = RMSNorm(cfg.hidden_size, cfg.eps, device=device, dtype=dtype)
            self.embeddings = PositionEmbeddings(cfg, device=device, dtype=dtype)
        self.blocks = VisionBlocks(cfg, count, with_tail, device=device, dtype=dtype)
        if with_tail:
            m = cfg.spatial_merge_size
            self.downsample = nn.Conv2d(cfg.hidden_size, cfg.out_hidden_size, m, stride=m, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, geo: VisionGeometry) -> torch.Tensor:
        if hasattr(self, "patch_embed"):
            x = self.embeddings(self.post_conv_layernorm(self.patch_embed(x)), geo)
        for layer in self.blocks.layers:
            x = layer(x, geo)
        if hasattr(self, "downsample"):
            m = self.cfg.spatial_merge_size
            x = self.blocks.final_layernorm(x).view(-1, m, m, x.shape[-1]).permute(0, 3, 1, 2)
            x = self.downsample(x).view(-1, self.cfg.out_hidden_size)
        return x


class Merger(nn.Module):
    """``image_encoder.projector``: Linear, LayerNorm, exact GELU, then a SwiGLU MLP (no biases)."""

    def __init__(self, cfg: GlmConfig, *, device=None, dtype=None):
        super().__init__()
        dim, inner = cfg.vision.out_hidden_size, cfg.vision.intermediate_size
        self.proj = nn.Linear(dim, dim, bias=False, device=device, dtype=dtype)
        self.post_projection_norm = nn.LayerNorm(dim, device=device, dtype=dtype)
        self.gate_proj = nn.Linear(dim, inner, bias=False, device=device, dtype=dtype)
        self.up_proj = nn.Linear(dim, inner, bias=False, device=device, dtype=dtype)
        self.down_proj = nn.Linear(inner, dim, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.post_projection_norm(self.proj(x)))
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class ImageEncoder(nn.Module):
    """``image_encoder``: this stage's part of the ViT and, on its last stage, the merger."""

    def __init__(self, cfg: GlmConfig, count: int, *, with_stem: bool, with_projector: bool, device=None,
                 dtype=None):
        super().__init__()
        self.cfg = cfg
        self.encoder = VisionTransformer(cfg.vision, count, with_stem=with_stem, with_tail=with_projector,
                                         device=device, dtype=dtype)
        if with_projector:
            self.projector = Merger(cfg, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor | None, pixels: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Pixels (first vision stage) or the previous stage's hidden states ``[N, C]`` in; hidden
        states, or the merged features ``[N / merge**2, hidden]`` on the last vision stage, out."""
        geo = vision_geometry(grid_thw, self.cfg.vision, pixels.device if x is None else x.device)
        x = self.encoder(pixels if hasattr(self.encoder, "patch_embed") else x, geo)
        return self.projector(x) if hasattr(self, "projector") else x
