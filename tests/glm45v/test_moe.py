"""GLM-4.5V's MoE pieces against transformers and against their reference twins: the router, the
grouped GEMM (reference and the NPU kernel with torch_npu stood in), the fp32 score-correction bias,
tokens-per-expert counts and the router balance loss."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from mm_core.kernels import get_kernel
from mm_core.kernels.grouped import grouped_mm
from mm_core.kernels.registry import clear_kernel_cache


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_kernel_cache()
    yield
    clear_kernel_cache()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mm_glm.tiny_moe import save_tiny_model

    with torch.random.fork_rng(devices=[]):
        return save_tiny_model(tmp_path_factory.mktemp("glm45v"), vision_depth=1, text_layers=3)


def test_grouped_mm_reference_is_one_matmul_per_expert() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 6, 5, generator=g)
    counts = torch.tensor([3, 0, 2, 4])
    x = torch.randn(9, 6, generator=g)
    experts = torch.repeat_interleave(torch.arange(4), counts)
    want = torch.stack([x[i] @ w[experts[i]] for i in range(9)])
    torch.testing.assert_close(grouped_mm(x, w, counts), want)
    torch.testing.assert_close(get_kernel("grouped_mm", "cpu")(x, w, counts), want)  # torch._grouped_mm on CPU
    with pytest.raises(ValueError, match="summing to the 9 rows"):
        grouped_mm(x, w, torch.tensor([1, 1, 1, 1]))


def test_npu_grouped_mm_wins_on_npu_and_matches_its_twin(monkeypatch) -> None:
    calls = []

    def fake_grouped_matmul(xs, ws, *, group_list, split_item, group_type, group_list_type):
        assert (split_item, group_type, group_list_type) == (2, 0, 0)
        calls.append(group_list.tolist())
        ends = group_list.tolist()
        counts = torch.tensor([b - a for a, b in zip([0] + ends[:-1], ends)])
        return [grouped_mm(xs[0], ws[0], counts)]  # cumulative counts in, one output tensor out

    fake = types.ModuleType("torch_npu")
    fake.__spec__ = types.SimpleNamespace(name="torch_npu")
    fake.npu_grouped_matmul = fake_grouped_matmul
    monkeypatch.setitem(sys.modules, "torch_npu", fake)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object() if name == "torch_npu" else None)
    monkeypatch.setattr(torch, "npu", types.SimpleNamespace(is_available=lambda: True), raising=False)
    from mm_glm import moe_kernels_npu

    kernel = get_kernel("grouped_mm", "npu")
    assert kernel is moe_kernels_npu.grouped_mm
    x, w, counts = torch.randn(7, 4), torch.randn(3, 4, 5), torch.tensor([2, 5, 0])
    torch.testing.assert_close(kernel(x, w, counts), grouped_mm(x, w, counts))
    assert calls == [[2, 7, 7]]


def test_cpu_never_imports_torch_npu_for_grouped_mm() -> None:
    assert get_kernel("grouped_mm", "npu") is grouped_mm  # no torch_npu here: the reference
    assert "torch_npu" not in sys.modules


def test_router_matches_transformers_and_the_bias_changes_the_choice() -> None:
    from transformers.models.glm4v_moe.modeling_glm4v_moe import Glm4vMoeTextConfig, Glm4vMoeTextTopkRouter

    from mm_glm.moe import MoeConfig, Router

    tcfg = Glm4vMoeTextConfig(hidden_size=16, n_routed_experts=8, num_experts_per_tok=3, routed_scaling_factor=2.5,
                              norm_topk_prob=True, n_group=1, topk_group=1)
    theirs = Glm4vMoeTextTopkRouter(tcfg)
    ours = Router(16, MoeConfig(8, 3, 4, 4, True, 2.5))
    torch.manual_seed(0)
    with torch.no_grad():
        theirs.weight.normal_()
        theirs.e_score_correction_bias.normal_(0, 0.5)
        ours.weight.copy_(theirs.weight)
        ours.expert_bias.copy_(theirs.e_score_correction_bias)
    x = torch.randn(32, 16)
    t_logits, t_w, t_idx = theirs(x)
    o_logits, o_w, o_idx = ours(x)
    torch.testing.assert_close(o_logits, t_logits)
    t_sorted, t_order = t_idx.sort(-1)
    o_sorted, o_order = o_idx.sort(-1)
    assert torch.equal(o_sorted, t_sorted)
    torch.testing.assert_close(o_w.gather(1, o_order), t_w.gather(1, t_order))
    unbiased = torch.topk(o_logits.sigmoid(), 3, dim=-1).indices.sort(-1).values
    assert not torch.equal(unbiased, o_sorted), "the correction bias should change some token's experts"


def test_expert_bias_stays_fp32_and_untrained_in_a_bf16_model(tiny: Path) -> None:
    from mm_core.nn.pretrained import load_pretrained

    model = load_pretrained(tiny, dtype=torch.bfloat16)
    mlp = model.text_decoder.decoder.layers[1].mlp
    assert mlp.router.expert_bias.dtype == torch.float32 and mlp.router.weight.dtype == torch.bfloat16
    assert "text_decoder.decoder.layers.1.mlp.router.expert_bias" not in dict(model.named_parameters())
    from safetensors import safe_open

    with safe_open(str(tiny / "model.safetensors"), "pt") as f:
        want = f.get_tensor("model.language_model.layers.1.mlp.gate.e_score_correction_bias")
    assert torch.equal(mlp.router.expert_bias, want.float())
    assert not hasattr(model.text_decoder.decoder.layers[0].mlp, "router")  # first_k_dense_replace = 1


def test_counts_and_balance_loss_match_transformers(tiny: Path) -> None:
    import transformers

    from mm_core.contracts import total_aux_loss
    from mm_core.nn.pretrained import load_pretrained
    from mm_glm.tiny import make_inputs

    cfg = json.loads((tiny / "config.json").read_text())
    batch = make_inputs(cfg, [[("text", 9)], [("text", 4), ("image", (4, 4)), ("text", 2)]])
    ours = load_pretrained(tiny, dtype=torch.float32).train()
    hf = transformers.Glm4vMoeForConditionalGeneration.from_pretrained(tiny, dtype=torch.float32).eval()
    with torch.no_grad():
        want = hf(**{k: v for k, v in batch.items() if k != "labels"}, output_router_logits=True)
        ours(**{k: v for k, v in batch.items() if k not in ("labels", "mm_token_type_ids")})
    assert ours.take_expert_counts() == {} and total_aux_loss(ours) is None  # a no-grad forward: not training
    got = ours(**{k: v for k, v in batch.items() if k not in ("labels", "mm_token_type_ids")}).detach()
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got[mask], want.logits[mask], atol=1e-4, rtol=0)
    torch.testing.assert_close(total_aux_loss(ours), want.aux_loss, atol=1e-6, rtol=1e-5)
    counts = ours.take_expert_counts()
    rows = int(batch["attention_mask"].sum())  # padding is routed (as in transformers) but not counted
    assert rows < batch["input_ids"].numel()
    assert sorted(counts) == [1, 2] and all(int(c.sum()) == 2 * rows for c in counts.values())
    assert ours.take_expert_counts() == {}  # taken: reset until the next forward


def test_stats_cross_a_bf16_stage_boundary_to_24_bits() -> None:
    """Pipeline stages pass the balance-loss sums as one extra bf16 position, three parts per value."""
    from mm_glm.moe_aux import pack_stats, unpack_stats

    probs = torch.tensor([1234.5678, 0.00123, 98765.4, 3.0], requires_grad=True)
    counts = torch.tensor([1_000_003.0, 0.0, 77.0, 16_777_215.0])  # integers up to 2**24 - 1 stay exact
    hidden = torch.randn(2, 5, 16, dtype=torch.bfloat16)
    sent = pack_stats(hidden, probs, counts)
    assert sent.shape == (2, 6, 16) and sent.dtype == torch.bfloat16
    got_hidden, got_probs, got_counts = unpack_stats(sent, 4)
    assert torch.equal(got_hidden, hidden) and torch.equal(got_counts, counts)
    torch.testing.assert_close(got_probs, probs.detach(), rtol=2**-22, atol=0)
    got_probs.sum().backward()  # the gradient reaches the sending stage's sums unchanged
    assert torch.equal(probs.grad, torch.ones(4))
