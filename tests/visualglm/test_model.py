"""VisualGLM-6B's numerics on tiny random weights.

- the EVA ViT (with ``ln_vision``) against ``transformers.Blip2VisionModel`` and the Q-Former against
  ``Blip2QFormerModel``, weights mapped by the reference's LayerNorm correspondence;
- ChatGLM against a reference written here from the published equations (2-D rotary halves,
  prefix-LM mask, residual scale sqrt(2 x layers), tanh GELU), not from the model code;
- the whole model's logits against those parts put together (image features in place of the
  placeholders between ``<img>`` and ``</img>``).
"""

from __future__ import annotations

import math

import pytest
import torch

from mm_visualglm.config import parse_config
from mm_visualglm.model import build_model
from mm_visualglm.tiny import make_inputs, random_mm_state, tiny_config_dict

ATOL = 1e-5


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    config = tiny_config_dict(vision_depth=2, text_layers=2, qformer_layers=3)
    state = random_mm_state(config, seed=1)
    # BLIP-2's ViT has no k bias: zero ours so the two models hold the same weights
    for k in [k for k in state if k.startswith("image_encoder.encoder.blocks") and k.endswith("linear_qkv.bias")]:
        c = state[k].shape[0] // 3
        state[k][c:2 * c] = 0
    model = build_model(config, device="cpu")
    model.load_state_dict(state)
    return config, parse_config(config), state, model.eval()


def blip2_vision(cfg, state):
    from transformers import Blip2VisionConfig, Blip2VisionModel

    v = cfg.vision
    hf = Blip2VisionModel(Blip2VisionConfig(
        hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.depth,
        num_attention_heads=v.num_heads, image_size=v.image_size, patch_size=v.patch_size, layer_norm_eps=v.eps,
        qkv_bias=True, hidden_act="gelu")).eval()
    hf.post_layernorm.eps = v.ln_vision_eps  # ln_vision: nn.LayerNorm's default eps, not the blocks'
    e = "image_encoder.encoder."
    sd = {"embeddings.class_embedding": state[e + "cls_token.weight"].view(1, 1, -1),
          "embeddings.position_embedding": state[e + "position_embeddings.weight"].unsqueeze(0),
          "embeddings.patch_embedding.weight": state[e + "patch_embed.proj.weight"],
          "embeddings.patch_embedding.bias": state[e + "patch_embed.proj.bias"],
          "post_layernorm.weight": state[e + "ln_vision.weight"], "post_layernorm.bias": state[e + "ln_vision.bias"]}
    for i in range(v.depth):
        ours, theirs = f"{e}blocks.layers.{i}.", f"encoder.layers.{i}."
        # transformers keeps the fused bias [q_bias; 0; v_bias] (our k bias is zeroed in the fixture)
        for a, b in (("self_attention.linear_qkv", "self_attn.qkv"), ("input_layernorm", "layer_norm1"), ("self_attention.linear_proj", "self_attn.projection"),
                     ("pre_mlp_layernorm", "layer_norm2"), ("mlp.linear_fc1", "mlp.fc1"), ("mlp.linear_fc2", "mlp.fc2")):
            for p in ("weight", "bias"):
                sd[f"{theirs}{b}.{p}"] = state[f"{ours}{a}.{p}"]
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    return hf


def blip2_qformer(cfg, state):
    """BERT/BLIP-2 LayerNorms from SAT's post order: layer 0's input norm is the embeddings LN, layer
    i+1's input norm (and finally ``final_layernorm``) the output LN of layer i."""
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    q = cfg.qformer
    hf = Blip2QFormerModel(Blip2QFormerConfig(
        hidden_size=q.hidden_size, num_hidden_layers=q.depth, num_attention_heads=q.num_heads,
        intermediate_size=q.intermediate_size, cross_attention_frequency=2, encoder_hidden_size=q.encoder_width,
        layer_norm_eps=q.eps, hidden_act="gelu")).eval()
    assert q.cross_layers == tuple(range(0, q.depth, 2))
    p0 = "image_encoder.projector.qformer."
    sd = {}

    def put(theirs: str, ours: str) -> None:
        for p in ("weight", "bias"):
            sd[f"{theirs}.{p}"] = state[f"{ours}.{p}"]

    put("layernorm", p0 + "layers.0.input_layernorm")
    for i in range(q.depth):
        ours, theirs = f"{p0}layers.{i}.", f"encoder.layer.{i}."
        for p in ("weight", "bias"):
            for name, part in zip(("query", "key", "value"), state[f"{ours}self_attention.linear_qkv.{p}"].chunk(3)):
                sd[f"{theirs}attention.attention.{name}.{p}"] = part
        put(theirs + "attention.output.dense", ours + "self_attention.linear_proj")
        put(theirs + "attention.output.LayerNorm", ours + "post_attention_layernorm")
        if i in q.cross_layers:
            put(theirs + "crossattention.attention.query", ours + "cross_attention.linear_q")
            for p in ("weight", "bias"):
                k, v = state[f"{ours}cross_attention.linear_kv.{p}"].chunk(2)
                sd[f"{theirs}crossattention.attention.key.{p}"], sd[f"{theirs}crossattention.attention.value.{p}"] = k, v
            put(theirs + "crossattention.output.dense", ours + "cross_attention.linear_proj")
            put(theirs + "crossattention.output.LayerNorm", ours + "post_cross_attention_layernorm")
        put(theirs + "intermediate_query.dense", ours + "mlp.linear_fc1")
        put(theirs + "output_query.dense", ours + "mlp.linear_fc2")
        nxt = f"{p0}layers.{i + 1}.input_layernorm" if i + 1 < q.depth else p0 + "final_layernorm"
        put(theirs + "output_query.LayerNorm", nxt)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    # the text branch's FFN (``intermediate`` / ``output``) never runs on query tokens
    assert not unexpected and all(".intermediate." in k or ".output." in k and "_query" not in k and "attention"
                                  not in k for k in missing), (missing, unexpected)
    return hf


def image_features(cfg, state, pixels: torch.Tensor) -> torch.Tensor:
    """transformers' ViT and Q-Former, then ``glm_proj``: ``[N * queries, hidden]``."""
    vit = blip2_vision(cfg, state)(pixel_values=pixels).last_hidden_state
    queries = state["image_encoder.projector.qformer.query_embeddings.weight"].expand(pixels.shape[0], -1, -1)
    out = blip2_qformer(cfg, state)(query_embeds=queries, encoder_hidden_states=vit).last_hidden_state
    w, b = state["image_encoder.projector.linear_proj.weight"], state["image_encoder.projector.linear_proj.bias"]
    return (out @ w.t() + b).flatten(0, 1)


# -- ChatGLM from the equations ---------------------------------------------------------------


def ref_positions(ids: list[int], cfg) -> tuple[list[int], list[int], int]:
    """position ids, block position ids, context length (index of <sop>)."""
    c = ids.index(cfg.bos_token_id)
    gmask = ids.index(cfg.gmask_token_id)
    return list(range(c)) + [gmask] * (len(ids) - c), [0] * c + list(range(1, len(ids) - c + 1)), c


def ref_rotate(x: torch.Tensor, pos: list[int]) -> torch.Tensor:
    """x [T, d]: pairs (j, j + d/2) rotate by pos * 10000^(-2j/d)."""
    d = x.shape[-1]
    out = x.clone()
    for t, p in enumerate(pos):
        for j in range(d // 2):
            angle = p * 10000 ** (-2 * j / d)
            a, b = x[t, j], x[t, j + d // 2]
            out[t, j] = a * math.cos(angle) - b * math.sin(angle)
            out[t, j + d // 2] = b * math.cos(angle) + a * math.sin(angle)
    return out


def ref_chatglm(state, cfg, ids: list[int], embeds: torch.Tensor) -> torch.Tensor:
    """Logits ``[T, V]`` of one unpadded sample whose input embeddings are ``embeds``."""
    t_cfg = cfg.text
    n, heads, d = len(ids), t_cfg.num_heads, t_cfg.head_dim
    pos, block, c = ref_positions(ids, cfg)
    allowed = torch.tensor([[j < c or j <= i for j in range(n)] for i in range(n)])
    alpha = math.sqrt(2 * t_cfg.num_layers)

    def ln(x, prefix):
        return torch.nn.functional.layer_norm(x, (x.shape[-1],), state[prefix + ".weight"], state[prefix + ".bias"],
                                              t_cfg.eps)

    def lin(x, prefix):
        return x @ state[prefix + ".weight"].t() + state[prefix + ".bias"]

    x = embeds
    for layer in range(t_cfg.num_layers):
        p = f"text_decoder.decoder.layers.{layer}."
        a = ln(x, p + "input_layernorm")
        qkv = lin(a, p + "self_attention.linear_qkv").view(n, 3, heads, d)  # mm rows: [Q; K; V] thirds
        outs = []
        for h in range(heads):
            q, k, v = qkv[:, 0, h], qkv[:, 1, h], qkv[:, 2, h]
            q = torch.cat([ref_rotate(q[:, : d // 2], pos), ref_rotate(q[:, d // 2:], block)], dim=-1)
            k = torch.cat([ref_rotate(k[:, : d // 2], pos), ref_rotate(k[:, d // 2:], block)], dim=-1)
            scores = (q @ k.t() / math.sqrt(d)).masked_fill(~allowed, -10000.0)
            outs.append(scores.softmax(-1) @ v)
        h_ = a * alpha + lin(torch.cat(outs, dim=-1), p + "self_attention.linear_proj")
        m = ln(h_, p + "pre_mlp_layernorm")
        u = lin(m, p + "mlp.linear_fc1")
        gelu = 0.5 * u * (1 + torch.tanh(0.7978845608028654 * (u + 0.044715 * u**3)))
        x = m * alpha + lin(gelu, p + "mlp.linear_fc2")
    x = ln(x, "text_decoder.decoder.final_layernorm")
    return x @ state["text_decoder.output_layer.weight"].t()


def test_vit_matches_blip2_vision_model(setup) -> None:
    _, cfg, state, model = setup
    pixels = torch.randn(2, 3, cfg.vision.image_size, cfg.vision.image_size)
    with torch.no_grad():
        ref = blip2_vision(cfg, state)(pixel_values=pixels).last_hidden_state
        ours = model.image_encoder.encoder(pixels)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-5)


def test_qformer_matches_blip2_qformer_model(setup) -> None:
    _, cfg, state, model = setup
    vit = torch.randn(2, 5, cfg.vision.hidden_size)
    queries = state["image_encoder.projector.qformer.query_embeddings.weight"].expand(2, -1, -1)
    with torch.no_grad():
        ref = blip2_qformer(cfg, state)(query_embeds=queries, encoder_hidden_states=vit).last_hidden_state
        ours = model.image_encoder.projector.qformer(vit)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-5)


def test_chatglm_matches_the_equations(setup) -> None:
    config, cfg, state, model = setup
    batch = make_inputs(config, [(0, 6, 5)], seed=2)
    ids = batch["input_ids"][0].tolist()
    with torch.no_grad():
        ref = ref_chatglm(state, cfg, ids, state["text_decoder.embedding.word_embeddings.weight"][ids])
        ours = model(**batch)[0]
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-5)


def test_whole_model_is_the_sum_of_its_parts(setup) -> None:
    config, cfg, state, model = setup
    batch = make_inputs(config, [(1, 4, 3)], seed=3)
    ids = batch["input_ids"][0].tolist()
    with torch.no_grad():
        embeds = state["text_decoder.embedding.word_embeddings.weight"][ids].clone()
        slots = [i for i, t in enumerate(ids) if t == cfg.image_token_id]
        assert len(slots) == cfg.image_length and slots == list(range(slots[0], slots[0] + cfg.image_length))
        embeds[slots] = image_features(cfg, state, batch["pixel_values"])
        ref = ref_chatglm(state, cfg, ids, embeds)
        ours = model(**batch)[0]
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-5)


def test_padding_and_packing_do_not_change_a_sample(setup) -> None:
    """A right-padded batch row and two samples packed in one row give each sample's own logits."""
    config, _, _, model = setup
    a, b = make_inputs(config, [(0, 5, 4)], seed=4), make_inputs(config, [(0, 3, 2)], seed=5)
    ids = torch.cat([a["input_ids"], b["input_ids"]], dim=1)
    seg = torch.cat([torch.zeros_like(a["input_ids"]), torch.ones_like(b["input_ids"])], dim=1)
    with torch.no_grad():
        packed = model(input_ids=ids, segment_ids=seg)[0]
        torch.testing.assert_close(packed[: a["input_ids"].shape[1]], model(**a)[0], atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(packed[a["input_ids"].shape[1]:], model(**b)[0], atol=ATOL, rtol=1e-5)
        both = make_inputs(config, [(0, 5, 4), (0, 3, 2)], seed=6)
        out = model(**both)
        n = int(both["attention_mask"][1].sum())
        row = {k: v[1:2, :n] for k, v in both.items() if k != "labels"}
        torch.testing.assert_close(out[1, :n], model(**row)[0], atol=ATOL, rtol=1e-5)


def test_padding_with_the_placeholder_id_is_not_an_image(setup) -> None:
    """The engine's synthetic source pads with id 0, VisualGLM's placeholder (<unk>): only real tokens count."""
    config, cfg, _, model = setup
    batch = make_inputs(config, [(1, 4, 3), (1, 2, 1)], seed=7)
    batch["input_ids"][batch["attention_mask"] == 0] = cfg.image_token_id
    with torch.no_grad():
        out = model(**batch)
        n = int(batch["attention_mask"][1].sum())
        alone = model(input_ids=batch["input_ids"][1:, :n], pixel_values=batch["pixel_values"][1:])
    torch.testing.assert_close(out[1, :n], alone[0], atol=ATOL, rtol=1e-5)
