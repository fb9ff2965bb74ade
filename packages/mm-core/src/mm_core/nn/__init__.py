"""Shared building blocks for model families: each routes its hot op through the kernel registry,
so a faster device kernel (CUDA, NPU) replaces the reference without touching model code."""

from mm_core.nn.kv_cache import KVCache
from mm_core.nn.layers import RMSNorm, SwiGLUMLP, apply_rotary, apply_rotary_interleaved, attention

__all__ = ["KVCache", "RMSNorm", "SwiGLUMLP", "apply_rotary", "apply_rotary_interleaved", "attention"]
