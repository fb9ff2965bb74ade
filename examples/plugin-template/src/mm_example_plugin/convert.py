"""The example family's converter: the rule table that says how each HF weight is named and split.

One rule per mm tensor: the HF tensor(s) it comes from (``{layer}``: the global layer number on
the HF side, the stage-local one on the mm side), an op (identity here) and a tensor-parallel
split (column-parallel qkv/fc1, row-parallel proj/fc2 in the decoder, the rest replicated). The
engine derives its tensor-parallel plan from these splits, so they are declared only here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mm_convert.converter import Converter
from mm_core.checkpoint.ops import COLUMN, ROW
from mm_core.checkpoint.rules import Rule

VIT, HF_VIT = "image_encoder.encoder.blocks.layers.{layer}.", "vision.blocks.{layer}."
LLM, HF_LLM = "text_decoder.decoder.layers.{layer}.", "model.layers.{layer}."
PROJ = "image_encoder.projector."


class ExampleConverter(Converter):
    """The example family (the toy model): HF <-> mm (tp/pp) <-> DCP."""

    modules = ("vit", "llm")

    def depths(self, hf: Mapping[str, Any]) -> dict[str, int]:
        return {"vit": int(hf["vision_config"]["depth"]), "llm": int(hf["num_hidden_layers"])}

    def rules(self, hf: Mapping[str, Any]) -> list[Rule]:
        rules = [Rule("image_encoder.encoder.patch_embed.proj.weight", "vision.patch_embed.weight", "vit",
                      place="first")]
        for mm, name in (("input_layernorm.weight", "norm.weight"), ("mlp.linear_fc1.weight", "fc1.weight"),
                         ("mlp.linear_fc1.bias", "fc1.bias"), ("mlp.linear_fc2.weight", "fc2.weight"),
                         ("mlp.linear_fc2.bias", "fc2.bias")):
            rules.append(Rule(VIT + mm, HF_VIT + name, "vit"))
        for mm, name in (("layernorm.weight", "norm.weight"), ("encoder.linear_fc1.weight", "fc1.weight"),
                         ("encoder.linear_fc1.bias", "fc1.bias"), ("encoder.linear_fc2.weight", "fc2.weight"),
                         ("encoder.linear_fc2.bias", "fc2.bias")):
            rules.append(Rule(PROJ + mm, "projector." + name, "vit", place="last"))
        rules.append(Rule("text_decoder.embedding.word_embeddings.weight", "model.embed_tokens.weight", "llm",
                          place="first"))
        for mm, name, tp in (("input_layernorm.weight", "input_norm.weight", None),
                             ("self_attention.linear_qkv.weight", "self_attn.qkv.weight", COLUMN),
                             ("self_attention.linear_qkv.bias", "self_attn.qkv.bias", COLUMN),
                             ("self_attention.linear_proj.weight", "self_attn.o_proj.weight", ROW),
                             ("pre_mlp_layernorm.weight", "post_attention_norm.weight", None),
                             ("mlp.linear_fc1.weight", "mlp.up_proj.weight", COLUMN),
                             ("mlp.linear_fc2.weight", "mlp.down_proj.weight", ROW)):
            rules.append(Rule(LLM + mm, HF_LLM + name, "llm", **({"tp": tp} if tp else {})))
        rules += [Rule("text_decoder.decoder.final_layernorm.weight", "model.norm.weight", "llm", place="last"),
                  Rule("text_decoder.output_layer.weight", "lm_head.weight", "llm", place="last")]
        return rules
