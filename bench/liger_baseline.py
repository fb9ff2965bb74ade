"""The stronger baseline of issue 16: Liger's kernels on a transformers Qwen2.5-VL, as LLaMA-Factory's
``enable_liger_kernel`` applies them (the model patch), or op by op where that patch fails to import
(liger-kernel 0.8.5 with transformers 5). Patches are process-wide; ``restored`` undoes them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch


@contextlib.contextmanager
def restored(*objects: Any) -> Iterator[None]:
    """Undo attribute patches (Liger's are process-wide) on modules and classes when the block ends."""
    saved = [(o, dict(vars(o))) for o in objects]
    try:
        yield
    finally:
        for o, before in saved:
            for k in [k for k in vars(o) if k not in before]:
                delattr(o, k)
            for k, v in before.items():
                if vars(o).get(k) is not v:
                    with contextlib.suppress(AttributeError, TypeError):
                        setattr(o, k, v)


def liger_modules() -> list[Any]:
    """What Liger's Qwen2.5-VL patches touch: the modeling module and its classes."""
    import inspect

    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as mod

    return [mod, *(c for _, c in inspect.getmembers(mod, inspect.isclass) if c.__module__ == mod.__name__)]


def apply_liger(model: torch.nn.Module, model_patch: bool = True) -> tuple[str, Callable | None]:
    """Liger kernels on a transformers Qwen2.5-VL: the model patch (``model_patch``), else op by op.
    Returns (how, loss function ``(model, batch) -> loss`` where the fused LM-head loss is called by hand)."""
    from liger_kernel.transformers.rope import liger_rotary_pos_emb
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as mod

    mixed_tables = not hasattr(mod, "apply_multimodal_rotary_pos_emb")  # transformers 5 mixes mRoPE sections first
    if model_patch:
        try:
            from liger_kernel.transformers import apply_liger_kernel_to_qwen2_5_vl

            apply_liger_kernel_to_qwen2_5_vl(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                             fused_linear_cross_entropy=True, model=model)
            if mixed_tables:  # the patch's rope replaces a function this transformers no longer calls
                mod.apply_rotary_pos_emb = liger_rotary_pos_emb
            return "apply_liger_kernel_to_qwen2_5_vl" + (" + liger_rotary_pos_emb" if mixed_tables else ""), None
        except Exception as e:  # noqa: BLE001 - the issue's failure mode: the patch does not import
            print(f"  liger: apply_liger_kernel_to_qwen2_5_vl unusable ({type(e).__name__}: {e}); op by op", flush=True)
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
    from liger_kernel.transformers.qwen2vl_mrope import liger_multimodal_rotary_pos_emb

    return "op by op", patch_ops(
        model, mod, rms_norm=lambda x, w, eps: LigerRMSNormFunction.apply(x, w, eps, 0.0, "llama", False),
        silu_mul=lambda a, b: LigerSiLUMulFunction.apply(a, b, 1.0, 1.0),
        rope=liger_rotary_pos_emb, mrope=liger_multimodal_rotary_pos_emb,
        linear_ce=LigerFusedLinearCrossEntropyLoss(reduction="mean"))


def patch_ops(model: torch.nn.Module, modeling: Any, *, rms_norm: Callable, silu_mul: Callable, rope: Callable,
              mrope: Callable, linear_ce: Callable) -> Callable:
    """Swap a transformers Qwen2.5-VL's RMSNorms and SiLU MLPs (instances) and its text rotary (the
    modeling module's function: ``rope`` on mixed tables, or ``mrope`` where transformers still
    mixes the sections there; undo with ``restored``) for the given ops. Returns the loss
    ``(model, batch) -> mean CE`` through ``linear_ce(head_weight, hidden, targets)``, no logits."""
    import types

    for m in model.modules():
        if type(m).__name__.endswith("RMSNorm"):
            m.forward = types.MethodType(lambda self, x: rms_norm(x, self.weight, self.variance_epsilon), m)
        elif all(hasattr(m, a) for a in ("gate_proj", "up_proj", "down_proj")):
            m.forward = types.MethodType(lambda self, x: self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x))),
                                         m)
    if hasattr(modeling, "apply_multimodal_rotary_pos_emb"):
        modeling.apply_multimodal_rotary_pos_emb = mrope
    else:
        modeling.apply_rotary_pos_emb = rope

    def loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        batch = dict(batch)
        labels = batch.pop("labels")
        hidden = model.model(**batch).last_hidden_state
        h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        return linear_ce(model.lm_head.weight, h, labels[:, 1:].reshape(-1))

    return loss


def liger_importable() -> str | None:
    """None when liger-kernel imports, else why not."""
    try:
        import liger_kernel.ops.rms_norm  # noqa: F401
    except Exception as e:  # noqa: BLE001 - Triton without a GPU raises various errors
        return f"{type(e).__name__}: {e}"
    return None
