"""Qwen2.5-VL's weight-mapping rows (the layouts: `bridge.mapping`). Hugging Face names are the
legacy hub layout (`model.layers.*`, `visual.*`); tensors stored with transformers-5 nested names
are folded onto it when read (`bridge.mapping.hf_legacy_name`)."""
from __future__ import annotations

from prco_mega.bridge.param_map import ParamMap

_L = "language_model.decoder.layers.{i}."
_H = "model.layers.{i}."

ROWS: tuple[ParamMap, ...] = (
    ParamMap(("language_model.embedding.word_embeddings.weight",), ("model.embed_tokens.weight",),
             "vocab"),
    ParamMap((_L + "input_layernorm.weight", _L + "self_attention.linear_qkv.layer_norm_weight"),
             (_H + "input_layernorm.weight",), "replicated"),
    ParamMap((_L + "self_attention.linear_qkv.weight",),
             (_H + "self_attn.q_proj.weight", _H + "self_attn.k_proj.weight",
              _H + "self_attn.v_proj.weight"), "qkv"),
    ParamMap((_L + "self_attention.linear_qkv.bias",),
             (_H + "self_attn.q_proj.bias", _H + "self_attn.k_proj.bias",
              _H + "self_attn.v_proj.bias"), "qkv"),
    ParamMap((_L + "self_attention.linear_proj.weight",), (_H + "self_attn.o_proj.weight",), "row"),
    ParamMap((_L + "pre_mlp_layernorm.weight", _L + "mlp.linear_fc1.layer_norm_weight"),
             (_H + "post_attention_layernorm.weight",), "replicated"),
    ParamMap((_L + "mlp.linear_fc1.weight",),
             (_H + "mlp.gate_proj.weight", _H + "mlp.up_proj.weight"), "gate_up"),
    ParamMap((_L + "mlp.linear_fc2.weight",), (_H + "mlp.down_proj.weight",), "row"),
    ParamMap(("language_model.decoder.final_layernorm.weight",), ("model.norm.weight",),
             "replicated"),
    ParamMap(("language_model.output_layer.weight",), ("lm_head.weight",), "vocab",
             tied_hf="model.embed_tokens.weight"),
    ParamMap(("vision.model.",), ("visual.",), "prefix"),
)
