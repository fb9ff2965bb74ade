"""Qwen2.5-VL vision encoder in the mm layout: patch embedding, ViT blocks with 2-D rotary and window
attention (full attention in ``fullatt_block_indexes``), and the 2x2 patch-merging projector.

Numerics follow transformers' ``Qwen2_5_VisionTransformerPretrainedModel``. Tokens run through the
blocks in *window order* (merge units grouped window by window, as in HF); attention windows and
full-attention frames are laid out as a padded batch of segments for the registry's attention kernel. A pipeline
stage holding some of the blocks receives and returns hidden states in that window order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mm_core.nn import RMSNorm, SwiGLUMLP, apply_rotary, attention
from mm_qwen.config import VisionConfig


@dataclass
class VisionGeometry:
    """Per-batch index tensors derived from ``grid_thw`` alone (no weights)."""

    window_index: torch.Tensor  # [n_units] merge-unit order used inside the blocks
    reverse_index: torch.Tensor  # inverse permutation, applied after the projector
    cos: torch.Tensor  # [N, head_dim] rotary tables in window order
    sin: torch.Tensor
    window_batch: SegmentBatch  # windows (window-attention blocks)
    frame_batch: SegmentBatch  # frames (full-attention blocks)


@dataclass
class SegmentBatch:
    """Contiguous segments (windows or frames) laid out as a padded batch ``[S, L]``, so attention
    costs sum(len^2) instead of N^2 with a block-diagonal mask."""

    gather: torch.Tensor  # [S, L] token index per slot (0 on padding slots)
    valid: torch.Tensor  # [S, L] bool
    segment_ids: torch.Tensor | None  # [S, L]: 0 real, -1 padding; None when no padding
    # flat slot of each real token, in window order: ``valid`` as indices, found once per batch
    # (a boolean-mask index in every layer would be a data-dependent shape, which torch.compile breaks on)
    valid_slots: torch.Tensor | None = None

    @classmethod
    def from_ids(cls, ids: torch.Tensor) -> SegmentBatch:
        _, lengths = torch.unique_consecutive(ids, return_counts=True)
        starts = torch.cumsum(lengths, 0) - lengths
        slots = torch.arange(int(lengths.max()))
        valid = slots[None] < lengths[:, None]
        gather = torch.where(valid, starts[:, None] + slots[None], 0)
        seg = None if bool(valid.all()) else torch.where(valid, 0, -1)
        return cls(gather, valid, seg, valid.reshape(-1).nonzero().squeeze(1))

    def to(self, device: torch.device) -> SegmentBatch:
        seg = self.segment_ids.to(device) if self.segment_ids is not None else None
        slots = self.valid_slots.to(device) if self.valid_slots is not None else None
        return SegmentBatch(self.gather.to(device), self.valid.to(device), seg, slots)


def vision_geometry(grid_thw: torch.Tensor, cfg: VisionConfig, device: torch.device) -> VisionGeometry:
    """Window order, window/frame segment ids and 2-D rotary tables for a list of image/video grids."""
    m = cfg.spatial_merge_size
    unit = m * m
    ws = cfg.window_size // m // cfg.patch_size  # window side in merge units
    order, win_ids, frame_ids, hpos, wpos = [], [], [], [], []
    unit_offset = win_offset = frame_offset = 0
    for t, h, w in grid_thw.tolist():
        lh, lw = h // m, w // m
        nwh, nww = -(-lh // ws), -(-lw // ws)
        tt = torch.arange(t).view(t, 1, 1)
        ii = torch.arange(lh).view(1, lh, 1)
        jj = torch.arange(lw).view(1, 1, lw)
        window = (tt * nwh + ii // ws) * nww + jj // ws  # [t, lh, lw]
        key = window * (ws * ws) + (ii % ws) * ws + jj % ws
        order.append(torch.argsort(key.flatten()) + unit_offset)
        win_ids.append(window.flatten() + win_offset)
        frame_ids.append(torch.arange(t).repeat_interleave(lh * lw) + frame_offset)
        # patch coordinates, merge-block major (the processor's patch order)
        hh = torch.arange(h).view(lh, m, 1, 1).expand(lh, m, lw, m).transpose(1, 2).flatten()
        wv = torch.arange(w).view(1, 1, lw, m).expand(lh, m, lw, m).transpose(1, 2).flatten()
        hpos.append(hh.repeat(t))
        wpos.append(wv.repeat(t))
        unit_offset += t * lh * lw
        win_offset += t * nwh * nww
        frame_offset += t
    index = torch.cat(order)
    win = torch.cat(win_ids)[index].repeat_interleave(unit)
    frame = torch.cat(frame_ids)[index].repeat_interleave(unit)
    half = cfg.head_dim // 2
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, half, 2, dtype=torch.float32) / half))
    freqs = torch.cat([torch.cat(hpos).float()[:, None] * inv_freq, torch.cat(wpos).float()[:, None] * inv_freq], -1)
    emb = torch.cat([freqs, freqs], dim=-1)
    emb = emb.view(-1, unit, emb.shape[-1])[index].reshape(-1, emb.shape[-1])
    return VisionGeometry(
        window_index=index.to(device),
        reverse_index=torch.argsort(index).to(device),
        cos=emb.cos().to(device),
        sin=emb.sin().to(device),
        window_batch=SegmentBatch.from_ids(win).to(device),
        frame_batch=SegmentBatch.from_ids(frame).to(device),
    )


class PatchEmbed(nn.Module):
    """Conv3d with stride = kernel, done as one matmul on the processor's flattened patches."""

    def __init__(self, cfg: VisionConfig, *, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Module()
        shape = (cfg.hidden_size, cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.proj.weight = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight
        return pixels.to(weight.dtype) @ weight.reshape(weight.shape[0], -1).t()


class VisionAttention(nn.Module):
    """Bidirectional attention with fused ``linear_qkv`` laid out per head ``[q_h, k_h, v_h]``."""

    def __init__(self, cfg: VisionConfig, *, device=None, dtype=None):
        super().__init__()
        self.head_dim = cfg.head_dim
        self.linear_qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=True, device=device, dtype=dtype)
        self.linear_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=True, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, geo: VisionGeometry, segments: SegmentBatch) -> torch.Tensor:
        n = x.shape[0]
        qkv = self.linear_qkv(x).view(n, -1, 3, self.head_dim)  # heads local to this tp rank
        q, k, v = qkv.unbind(2)  # [N, H, D]
        cos, sin = geo.cos.unsqueeze(1), geo.sin.unsqueeze(1)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        # windows (or frames) as a padded batch [S, H, L, D]: attention never crosses them
        q, k, v = (t[segments.gather].transpose(1, 2) for t in (q, k, v))
        out = attention(q, k, v, causal=False, segment_ids=segments.segment_ids, scale=self.head_dim**-0.5)
        out = out.transpose(1, 2)  # [S, L, H, D]
        if segments.valid_slots is None:
            out = out[segments.valid]
        else:
            out = out.reshape(-1, *out.shape[2:]).index_select(0, segments.valid_slots)  # [N, H, D] in window order
        return self.linear_proj(out.reshape(n, -1))


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig, full_attention: bool, *, device=None, dtype=None):
        super().__init__()
        self.full_attention = full_attention
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.eps, device=device, dtype=dtype)
        self.self_attention = VisionAttention(cfg, device=device, dtype=dtype)
        self.pre_mlp_layernorm = RMSNorm(cfg.hidden_size, cfg.eps, device=device, dtype=dtype)
        self.mlp = SwiGLUMLP(cfg.hidden_size, cfg.intermediate_size, bias=True, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, geo: VisionGeometry) -> torch.Tensor:
        segments = geo.frame_batch if self.full_attention else geo.window_batch
        x = x + self.self_attention(self.input_layernorm(x), geo, segments)
        return x + self.mlp(self.pre_mlp_layernorm(x))


class VisionBlocks(nn.Module):
    """Holds ``layers`` so the state-dict names read ``blocks.layers.N``."""

    def __init__(self, cfg: VisionConfig, first: int, count: int, *, device=None, dtype=None):
        super().__init__()
        full = set(cfg.fullatt_block_indexes)
        self.layers = nn.ModuleList(
            VisionBlock(cfg, first + i in full, device=device, dtype=dtype) for i in range(count)
        )


class VisionTransformer(nn.Module):
    """``image_encoder.encoder``: the patch embedding (first vision stage only) and this stage's blocks."""

    def __init__(self, cfg: VisionConfig, first: int, count: int, with_patch_embed: bool, *, device=None,
                 dtype=None):
        super().__init__()
        self.cfg = cfg
        if with_patch_embed:
            self.patch_embed = PatchEmbed(cfg, device=device, dtype=dtype)
        self.blocks = VisionBlocks(cfg, first, count, device=device, dtype=dtype)

    def embed(self, pixels: torch.Tensor, geo: VisionGeometry) -> torch.Tensor:
        """Patch embedding, then reorder tokens into window order."""
        x = self.patch_embed(pixels)
        unit = self.cfg.spatial_merge_size**2
        return x.view(-1, unit, x.shape[-1])[geo.window_index].reshape(x.shape)

    def forward(self, x: torch.Tensor, geo: VisionGeometry) -> torch.Tensor:
        for layer in self.blocks.layers:
            x = layer(x, geo)
        return x


class ProjectorMLP(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, *, device=None, dtype=None):
        super().__init__()
        self.linear_fc1 = nn.Linear(dim_in, dim_in, bias=True, device=device, dtype=dtype)
        self.linear_fc2 = nn.Linear(dim_in, dim_out, bias=True, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.gelu(self.linear_fc1(x)))


class Projector(nn.Module):
    """``image_encoder.projector``: RMSNorm, 2x2 patch merge, Linear-GELU-Linear into the LLM width."""

    def __init__(self, cfg: VisionConfig, *, device=None, dtype=None):
        super().__init__()
        self.merged = cfg.hidden_size * cfg.spatial_merge_size**2
        self.layernorm = RMSNorm(cfg.hidden_size, cfg.eps, device=device, dtype=dtype)
        self.encoder = ProjectorMLP(self.merged, cfg.out_hidden_size, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, geo: VisionGeometry) -> torch.Tensor:
        merged = self.encoder(self.layernorm(x).reshape(-1, self.merged))
        return merged[geo.reverse_index]


class ImageEncoder(nn.Module):
    """``image_encoder``: the vision transformer part held by this stage (+ projector on its last stage)."""

    def __init__(self, cfg: VisionConfig, first: int, count: int, *, with_patch_embed: bool,
                 with_projector: bool, device=None, dtype=None):
        super().__init__()
        self.cfg = cfg
        self.encoder = VisionTransformer(cfg, first, count, with_patch_embed, device=device, dtype=dtype)
        if with_projector:
            self.projector = Projector(cfg, device=device, dtype=dtype)

    @property
    def has_patch_embed(self) -> bool:
        return hasattr(self.encoder, "patch_embed")

    @property
    def has_projector(self) -> bool:
        return hasattr(self, "projector")

    def forward(self, x: torch.Tensor | None, pixels: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Run this stage's share: ``pixels`` feed the patch embedding on the first vision stage,
        ``x`` (window-ordered hidden states) comes from the previous stage otherwise. Returns merged
        features ``[N / merge^2, out_hidden]`` in the processor's order on the last vision stage, else
        window-ordered hidden states."""
        geo = vision_geometry(grid_thw, self.cfg, pixels.device if x is None else x.device)
        if self.has_patch_embed:
            x = self.encoder.embed(pixels, geo)
        x = self.encoder(x, geo)
        return self.projector(x, geo) if self.has_projector else x
