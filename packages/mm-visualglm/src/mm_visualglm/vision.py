"""VisualGLM-6B's image encoder in mm names: EVA-CLIP ViT, then the BLIP-2 Q-Former and ``glm_proj``.

- ViT (``image_encoder.encoder``; SAT ``ViTModel``): a 14x14 patch conv (bias), a learned CLS
  token in front, a learned position table over CLS + patches, pre-LN blocks (eps 1e-6) with
  exact GELU, no final norm; the last vision stage applies ``ln_vision`` (eps 1e-5) to all tokens.
- Projector (``image_encoder.projector``): the Q-Former's learned queries (no positions, no text)
  go through post-norm layers in SAT's order (normalise at the start of each layer, residual on
  the normalised value, ``final_layernorm`` at the end; ``reference/glm-and-visualglm.md`` maps
  it to BLIP-2's LayerNorms); cross-attention to every ViT token on the listed layers only; then
  ``linear_proj`` (``glm_proj``) to the LLM width. Output: ``[N_images * queries, hidden]``.
"""

from __future__ import annotations

import torch
from torch import nn

from mm_visualglm.blocks import CrossAttention, GeluMLP, SelfAttention
from mm_visualglm.config import EvaConfig, QFormerConfig, VisualGLMConfig


class PatchEmbed(nn.Module):
    def __init__(self, cfg: EvaConfig, *, device=None, dtype=None):
        super().__init__()
        p = cfg.patch_size
        self.proj = nn.Conv2d(cfg.in_channels, cfg.hidden_size, p, stride=p, device=device, dtype=dtype)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels.to(self.proj.weight.dtype)).flatten(2).transpose(1, 2)  # [N, patches, C]


class VitLayer(nn.Module):
    """Pre-LN: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, cfg: EvaConfig, *, device=None, dtype=None):
        super().__init__()
        c = cfg.hidden_size
        self.input_layernorm = nn.LayerNorm(c, eps=cfg.eps, device=device, dtype=dtype)
        self.self_attention = SelfAttention(c, cfg.num_heads, device=device, dtype=dtype)
        self.pre_mlp_layernorm = nn.LayerNorm(c, eps=cfg.eps, device=device, dtype=dtype)
        self.mlp = GeluMLP(c, cfg.intermediate_size, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attention(self.input_layernorm(x))
        return x + self.mlp(self.pre_mlp_layernorm(x))


class VitBlocks(nn.Module):
    def __init__(self, cfg: EvaConfig, count: int, *, device=None, dtype=None):
        super().__init__()
        self.layers = nn.ModuleList(VitLayer(cfg, device=device, dtype=dtype) for _ in range(count))


class EvaViT(nn.Module):
    """``image_encoder.encoder``: stem (first vision stage), this stage's blocks, ``ln_vision`` (last)."""

    def __init__(self, cfg: EvaConfig, count: int, *, with_stem: bool, with_tail: bool, device=None, dtype=None):
        super().__init__()
        c = cfg.hidden_size
        if with_stem:
            self.patch_embed = PatchEmbed(cfg, device=device, dtype=dtype)
            self.cls_token = nn.Embedding(1, c, device=device, dtype=dtype)
            self.position_embeddings = nn.Embedding(cfg.num_positions, c, device=device, dtype=dtype)
        self.blocks = VitBlocks(cfg, count, device=device, dtype=dtype)
        if with_tail:
            self.ln_vision = nn.LayerNorm(c, eps=cfg.ln_vision_eps, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels ``[N, 3, H, W]`` (with the stem) or hidden states ``[N, 1 + patches, C]`` in."""
        if hasattr(self, "patch_embed"):
            patches = self.patch_embed(x)
            cls = self.cls_token.weight.expand(patches.shape[0], 1, -1)
            x = torch.cat([cls, patches], dim=1) + self.position_embeddings.weight
        for layer in self.blocks.layers:
            x = layer(x)
        return self.ln_vision(x) if hasattr(self, "ln_vision") else x


class QFormerLayer(nn.Module):
    """SAT's post order: ``a = ln_in(x); h = ln_attn(a + attn(a)); [h = ln_cross(h + cross(h, vit))];
    out = h + mlp(h)`` (the next layer's ``input_layernorm`` or ``final_layernorm`` normalises ``out``)."""

    def __init__(self, cfg: QFormerConfig, cross: bool, *, device=None, dtype=None):
        super().__init__()
        c = cfg.hidden_size
        self.input_layernorm = nn.LayerNorm(c, eps=cfg.eps, device=device, dtype=dtype)
        self.self_attention = SelfAttention(c, cfg.num_heads, device=device, dtype=dtype)
        self.post_attention_layernorm = nn.LayerNorm(c, eps=cfg.eps, device=device, dtype=dtype)
        if cross:
            self.cross_attention = CrossAttention(c, cfg.num_heads, cfg.encoder_width, device=device, dtype=dtype)
            self.post_cross_attention_layernorm = nn.LayerNorm(c, eps=cfg.eps, device=device, dtype=dtype)
        self.mlp = GeluMLP(c, cfg.intermediate_size, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, vit: torch.Tensor) -> torch.Tensor:
        a = self.input_layernorm(x)
        h = self.post_attention_layernorm(a + self.self_attention(a))
        if hasattr(self, "cross_attention"):
            h = self.post_cross_attention_layernorm(h + self.cross_attention(h, vit))
        return h + self.mlp(h)


class QFormer(nn.Module):
    def __init__(self, cfg: QFormerConfig, *, device=None, dtype=None):
        super().__init__()
        self.query_embeddings = nn.Embedding(cfg.num_queries, cfg.hidden_size, device=device, dtype=dtype)
        self.layers = nn.ModuleList(QFormerLayer(cfg, i in cfg.cross_layers, device=device, dtype=dtype)
                                    for i in range(cfg.depth))
        self.final_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.eps, device=device, dtype=dtype)

    def forward(self, vit: torch.Tensor) -> torch.Tensor:
        """ViT states ``[N, tokens, width]`` -> query states ``[N, queries, hidden]``."""
        x = self.query_embeddings.weight.unsqueeze(0).expand(vit.shape[0], -1, -1)
        for layer in self.layers:
            x = layer(x, vit)
        return self.final_layernorm(x)


class Projector(nn.Module):
    """``image_encoder.projector``: the Q-Former and ``linear_proj`` (SAT ``glm_proj``)."""

    def __init__(self, cfg: VisualGLMConfig, *, device=None, dtype=None):
        super().__init__()
        self.qformer = QFormer(cfg.qformer, device=device, dtype=dtype)
        self.linear_proj = nn.Linear(cfg.qformer.hidden_size, cfg.text.hidden_size, device=device, dtype=dtype)

    def forward(self, vit: torch.Tensor) -> torch.Tensor:
        return self.linear_proj(self.qformer(vit))


class ImageEncoder(nn.Module):
    """``image_encoder``: this stage's part of the ViT and, on its last stage, the projector."""

    def __init__(self, cfg: VisualGLMConfig, count: int, *, with_stem: bool, with_projector: bool, device=None,
                 dtype=None):
        super().__init__()
        self.encoder = EvaViT(cfg.vision, count, with_stem=with_stem, with_tail=with_projector, device=device,
                              dtype=dtype)
        if with_projector:
            self.projector = Projector(cfg, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels or the previous stage's ViT states in; ViT states, or the features
        ``[N_images * queries, hidden]`` on the last vision stage, out."""
        x = self.encoder(x)
        if not hasattr(self, "projector"):
            return x
        return self.projector(x).flatten(0, 1)


def preprocess_image(image, size: int = 224) -> torch.Tensor:
    """A PIL image -> ``[3, size, size]``: bicubic resize (no crop), CLIP mean/std, as VisualGLM's
    ``BlipImageEvalProcessor`` does for training and inference."""
    import numpy as np
    from PIL import Image

    img = image.convert("RGB").resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)
    return (x - mean) / std


