"""Adapters on Qwen2.5-VL and InternVL3 (tiny, random): base + adapters equals the merged weights,
each q/k/v (gate/up) section's update lands on that section's rows, only adapters train."""

from __future__ import annotations

import pytest
import torch

from mm_core.errors import ConfigError
from mm_core.lora.apply import adapter_state, apply_lora
from mm_core.lora.config import LoraConfig, check_against_model
from mm_core.lora.merge import merge_into
from mm_core.lora.sections import RuleSections
from mm_core.plugins import get_plugin_manager

ALL = ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]


def _family(name: str):
    if name == "qwen":
        from mm_qwen.tiny import make_inputs, tiny_config_dict

        hf = tiny_config_dict(vision_depth=2, text_layers=2)
        batch = make_inputs(hf, [[("text", 4), ("image", (1, 8, 12)), ("text", 5)]], seed=1)
    else:
        from mm_internvl.tiny import make_inputs, tiny_config_dict

        hf = tiny_config_dict()
        batch = make_inputs(hf, [[("text", 3), ("image", 1), ("text", 4)]], seed=1)
    return get_plugin_manager().model_for_hf_config(hf), hf, batch


def _depths(hf):
    from mm_core.family.hf_config import layer_counts

    vit, llm = layer_counts(hf)
    return {"vit": vit, "llm": llm}


def _build(spec, hf, seed=0):
    torch.manual_seed(seed)
    d = _depths(hf)
    return spec.builder(hf, vit_pp_layers=[d["vit"]], llm_pp_layers=[d["llm"]], pp_rank=0, device="cpu",
                        dtype=torch.float32).eval()


@pytest.fixture(scope="module", params=["qwen", "internvl"])
def family(request):
    return _family(request.param)


def _randomize(model, std=0.2, seed=5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in adapter_state(model).items():
            if ".lora_B." in n:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def test_adapted_model_equals_merged_weights(family):
    spec, hf, batch = family
    cfg = LoraConfig(rank=2, alpha=3.0, targets=ALL, layers={"text_decoder": [1], "vision_encoder": None})
    model = _build(spec, hf)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model(**batch)
    apply_lora(model, cfg, spec, hf, seed=1)
    with torch.no_grad():
        assert torch.equal(model(**batch), before)  # B = 0: the adapters start as the identity
    _randomize(model)
    with torch.no_grad():
        adapted = model(**batch)
    assert not torch.allclose(adapted, before)
    adapters = {k: v.detach() for k, v in adapter_state(model).items()}
    merged = dict(base)
    names = merge_into(merged, adapters, cfg.scaling, RuleSections(spec.converter, hf).of)
    assert len(names) == 2 * 4 + 4  # vision: 2 layers x 4; text: layer 1 x 4
    plain = _build(spec, hf, seed=9)
    plain.load_state_dict(merged, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch), adapted, rtol=1e-5, atol=1e-5)


def test_each_section_updates_its_own_rows(family):
    """Only the k adapter nonzero: through the converter back to HF q/k/v, only k changes, by
    scaling * B_k A_k; likewise the up half of [gate; up]."""
    from mm_core.checkpoint.api import get_converter

    spec, hf, _ = family
    cfg = LoraConfig(rank=2, alpha=2.0, targets=["linear_qkv", "linear_fc1"], layers={"text_decoder": [0]})
    model = _build(spec, hf)
    apply_lora(model, cfg, spec, hf, seed=1)
    table = get_converter(spec.converter)
    items = table.plan(hf, table.placement(hf, 1, {})).by_mm_key()
    for module, hot in (("self_attention.linear_qkv", 1), ("mlp.linear_fc1", 1)):
        name = f"text_decoder.decoder.layers.0.{module}"
        linear = model.get_submodule(name)
        with torch.no_grad():
            for s, b in enumerate(linear.lora_B):
                b.copy_(torch.randn_like(b) if s == hot else torch.zeros_like(b))
        zero = {f"{name}.weight": torch.zeros_like(linear.weight)}
        adapters = {f"{name}.lora_{x}.{s}": t.detach() for x, ps in (("A", linear.lora_A), ("B", linear.lora_B))
                    for s, t in enumerate(ps)}
        merge_into(zero, adapters, cfg.scaling, RuleSections(spec.converter, hf).of)
        item = items[f"{name}.weight"]
        hf_parts = item.rule.op.inverse(zero[f"{name}.weight"])
        if len(hf_parts) == 1:  # a fused HF tensor: its equal row sections
            hf_parts = list(hf_parts[0].chunk(len(linear.lora_B)))
        want = cfg.scaling * linear.lora_B[hot].detach() @ linear.lora_A[hot].detach()
        for s, part in enumerate(hf_parts):
            torch.testing.assert_close(part, want if s == hot else torch.zeros_like(part), msg=f"{name} section {s}")


def test_only_adapters_train(family):
    from mm_core.engine.config import TrainingConfig
    from mm_core.engine.optim import build_optimizer

    spec, hf, _ = family
    model = _build(spec, hf)
    apply_lora(model, LoraConfig(rank=4, targets=["linear_qkv"], layers={"text_decoder": [0, 1]}), spec, hf)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(adapter_state(model)) and len(trainable) == 2 * 2 * 3
    opt = build_optimizer(model, TrainingConfig())
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in adapter_state(model).values()}
    a = model.get_submodule("text_decoder.decoder.layers.0.self_attention.linear_qkv").lora_A[0]
    bound = 1.0 / a.shape[1] ** 0.5  # kaiming-uniform(a=sqrt 5) on [rank, in]
    assert a.abs().max() <= bound and a.abs().max() > 0.5 * bound


@pytest.mark.parametrize("change, message", [
    (dict(rank=0), "lora.rank"),
    (dict(dropout=1.0), "lora.dropout"),
    (dict(targets=["linear_qkvv"]), "lora.targets: 'linear_qkvv' matches no Linear"),
    (dict(layers={"text_decoder": [2]}), "lora.layers.text_decoder: layer 2 is out of range"),
    (dict(layers={"vision_projector": None}), "lora.layers: unknown module group 'vision_projector'"),
])
def test_config_errors_name_the_field(change, message):
    spec, hf, _ = _family("qwen")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        check_against_model(LoraConfig(**change), spec, hf, _depths(hf))


def test_dropout_acts_in_training_only():
    spec, hf, batch = _family("qwen")
    model = _build(spec, hf)
    apply_lora(model, LoraConfig(rank=2, dropout=0.5, targets=["linear_qkv"], layers={"text_decoder": None}), spec, hf)
    _randomize(model)
    with torch.no_grad():
        evals = [model(**batch) for _ in range(2)]
        model.train()
        trains = [model(**batch) for _ in range(2)]
    assert torch.equal(evals[0], evals[1]) and not torch.allclose(trains[0], trains[1])
