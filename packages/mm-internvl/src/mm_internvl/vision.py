"""InternViT, the pixel shuffle and the projector of InternVL3 in the mm layout.

Every tile is one ViT sequence ``[CLS, patches]`` with full (bidirectional) attention; blocks are
pre-norm with layer scale (``ls1``, ``ls2``). The attention's fused ``linear_qkv`` keeps HF's
``[Q; K; V]`` order (mm-format: no interleave for InternVL). The 6B encoder's q/k RMSNorms span all
heads (``use_qk_norm``). After the last block the CLS token is dropped, each 2x2 patch square is
folded into channels (pixel shuffle, ratio 0.5) and LayerNorm-Linear-GELU-Linear maps it to the LLM
width: ``(side / 2)**2`` tokens per tile.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mm_core.errors import ConfigError
from mm_core.nn import RMSNorm, attention
from mm_internvl.config import InternVLConfig, VisionConfig

_ACT = {"gelu": lambda x: F.gelu(x), "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "gelu_new": lambda x: F.gelu(x, approximate="tanh")}


def activation(name: str, field: str):
    if name not in _ACT:
        raise ConfigError(f"config.json {field} '{name}' is not supported; expected one of {sorted(_ACT)}")
    return _ACT[name]


def _norm(cfg: VisionConfig, device, dtype) -> nn.Module:
    if cfg.norm_type == "rms_norm":
        return RMSNorm(cfg.hidden_size, cfg.eps, device=device, dtype=dtype)
    return nn.LayerNorm(cfg.hidden_size, eps=cfg.eps, device=device, dtype=dtype)


class VisionEmbeddings(nn.Module):
    """Patch embedding, CLS token and absolute positions (bicubic-resized for other tile sizes)."""

    def __init__(self, cfg: VisionConfig, *, device=None, dtype=None):
        super().__init__()
        self.cfg = cfg
        c = cfg.hidden_size
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, c, device=device, dtype=dtype))
        self.patch_embedding = nn.Conv2d(cfg.num_channels, c, cfg.patch_size, stride=cfg.patch_size,
                                         device=device, dtype=dtype)
        self.position_embedding = nn.Parameter(torch.zeros(1, cfg.num_positions, c, device=device, dtype=dtype))

    def _positions(self, rows: int, cols: int) -> torch.Tensor:
        pos = self.position_embedding
        grid = (self.cfg.image_size[0] // self.cfg.patch_size, self.cfg.image_size[1] // self.cfg.patch_size)
        if (rows, cols) == grid and rows == cols:
            return pos
        side = int((pos.shape[1] - 1) ** 0.5)
        patch = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, size=(rows, cols), mode="bicubic", align_corners=False)
        return torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], dim=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        w = self.patch_embedding.weight
        x = self.patch_embedding(pixel_values.to(w.dtype))  # [N, C, rows, cols]
        rows, cols = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self._positions(rows, cols)


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig, *, device=None, dtype=None):
        super().__init__()
        self.head_dim = cfg.head_dim
        c = cfg.hidden_size
        self.linear_qkv = nn.Linear(c, 3 * c, bias=cfg.qkv_bias, device=device, dtype=dtype)
        if cfg.qk_norm:
            self.q_layernorm = RMSNorm(c, 1e-6, device=device, dtype=dtype)
            self.k_layernorm = RMSNorm(c, 1e-6, device=device, dtype=dtype)
        self.linear_proj = nn.Linear(c, c, bias=True, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t = x.shape[:2]
        q, k, v = self.linear_qkv(x).chunk(3, dim=-1)  # under tp: this rank's heads of each
        if hasattr(self, "q_layernorm"):
            q, k = self.q_layernorm(q), self.k_layernorm(k)
        q, k, v = (y.reshape(n, t, -1, self.head_dim).transpose(1, 2) for y in (q, k, v))
        out = attention(q, k, v, causal=False, scale=self.head_dim**-0.5)
        return self.linear_proj(out.transpose(1, 2).reshape(n, t, -1))


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig, *, device=None, dtype=None):
        super().__init__()
        self.act = activation(cfg.hidden_act, "vision_config.hidden_act")
        self.linear_fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, device=device, dtype=dtype)
        self.linear_fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(self.act(self.linear_fc1(x)))


class VisionLayer(nn.Module):
    def __init__(self, cfg: VisionConfig, *, device=None, dtype=None):
        super().__init__()
        self.input_layernorm = _norm(cfg, device, dtype)
        self.self_attention = VisionAttention(cfg, device=device, dtype=dtype)
        self.pre_mlp_layernorm = _norm(cfg, device, dtype)
        self.mlp = VisionMLP(cfg, device=device, dtype=dtype)
        self.ls1 = nn.Parameter(torch.full((cfg.hidden_size,), cfg.layer_scale_init, device=device, dtype=dtype))
        self.ls2 = nn.Parameter(torch.full((cfg.hidden_size,), cfg.layer_scale_init, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1 * self.self_attention(self.input_layernorm(x))
        return x + self.ls2 * self.mlp(self.pre_mlp_layernorm(x))


class VisionLayers(nn.Module):
    def __init__(self, cfg: VisionConfig, count: int, *, device=None, dtype=None):
        super().__init__()
        self.layers = nn.ModuleList(VisionLayer(cfg, device=device, dtype=dtype) for _ in range(count))


class VisionTransformer(nn.Module):
    """``image_encoder.encoder``: embeddings (first vision stage), blocks, final norm (last, 6B-style)."""

    def __init__(self, cfg: VisionConfig, count: int, *, with_embeddings: bool, with_final_norm: bool,
                 device=None, dtype=None):
        super().__init__()
        if with_embeddings:
            self.embeddings = VisionEmbeddings(cfg, device=device, dtype=dtype)
        self.encoder = VisionLayers(cfg, count, device=device, dtype=dtype)
        if with_final_norm:
            self.final_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.eps, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels ``[N, 3, H, W]`` (first stage) or hidden ``[N, 1 + P, C]`` -> hidden ``[N, 1 + P, C]``."""
        if hasattr(self, "embeddings"):
            x = self.embeddings(x)
        for layer in self.encoder.layers:
            x = layer(x)
        if hasattr(self, "final_layernorm"):
            x = self.final_layernorm(x)
        return x


def pixel_shuffle(x: torch.Tensor, n: int) -> torch.Tensor:
    """``[N, 1 + S*S, C]`` -> ``[N, (S/n)**2, C*n*n]``: drop CLS, fold each n x n square into channels.

    Matches InternVL's layout: with rows r and columns c, the output channel order is
    ``(r mod n, c mod n, C)`` and the token order is row-major over ``(r / n, c / n)``.
    """
    x = x[:, 1:]
    tiles, p, c = x.shape
    side = int(round(p**0.5))
    if side * side != p or side % n:
        raise ValueError(f"{p} patches per tile do not form a square whose side divides by {n}")
    x = x.reshape(tiles, side, side // n, n, c)  # [N, r, c/n, c%n, C]
    x = x.reshape(tiles, side // n, n, side // n, n * c)  # [N, r/n, r%n, c/n, (c%n, C)]
    x = x.permute(0, 1, 3, 2, 4)  # [N, r/n, c/n, r%n, (c%n, C)]
    return x.reshape(tiles, (side // n) ** 2, n * n * c)


class Projector(nn.Module):
    """``image_encoder.projector``: LayerNorm (eps 1e-5), Linear, GELU, Linear."""

    def __init__(self, cfg: InternVLConfig, *, device=None, dtype=None):
        super().__init__()
        self.act = activation(cfg.projector_act, "projector_hidden_act")
        self.norm = nn.LayerNorm(cfg.projector_in, device=device, dtype=dtype)
        self.linear_fc1 = nn.Linear(cfg.projector_in, cfg.text.hidden_size, device=device, dtype=dtype)
        self.linear_fc2 = nn.Linear(cfg.text.hidden_size, cfg.text.hidden_size, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(self.act(self.linear_fc1(self.norm(x))))


class ImageEncoder(nn.Module):
    """``image_encoder``: this stage's part of the ViT and, on its last stage, shuffle + projector."""

    def __init__(self, cfg: InternVLConfig, count: int, *, with_embeddings: bool, with_projector: bool,
                 device=None, dtype=None):
        super().__init__()
        self.cfg = cfg
        self.encoder = VisionTransformer(cfg.vision, count, with_embeddings=with_embeddings,
                                         with_final_norm=with_projector and cfg.vision.final_norm,
                                         device=device, dtype=dtype)
        if with_projector:
            self.projector = Projector(cfg, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels or ViT hidden states in; ViT hidden states, or ``[N * tokens, H]`` features, out."""
        x = self.encoder(x)
        if not hasattr(self, "projector"):
            return x
        return self.projector(pixel_shuffle(x, self.cfg.shuffle)).flatten(0, 1)
