"""Qwen3-VL's (dense) weight-mapping rows (the layouts: `bridge.mapping`): no QKV bias, per-head
QK RMSNorm; Hugging Face names as the hub checkpoints store them (`model.language_model.*`,
`model.visual.*`), which is also what vLLM's loader expects."""
from __future__ import annotations

from prco_mega.bridge.param_map import ParamMap

_L = "language_model.decoder.layers.{i}."
_Q3 = "model.language_model."
_Q3L = _Q3 + "layers.{i}."

ROWS: tuple[ParamMap, ...] = (
    ParamMap(("language_model.embedding.word_embeddings.weight",), (_Q3 + "embed_tokens.weight",),
             "vocab"),
    ParamMap((_L + "input_layernorm.weight", _L + "self_attention.linear_qkv.layer_norm_weight"),
             (_Q3L + "input_layernorm.weight",), "replicated"),
    ParamMap((_L + "self_attention.linear_qkv.weight",),
             (_Q3L + "self_attn.q_proj.weight", _Q3L + "self_attn.k_proj.weight",
              _Q3L + "self_attn.v_proj.weight"), "qkv"),
    ParamMap((_L + "self_attention.q_layernorm.weight",), (_Q3L + "self_attn.q_norm.weight",),
             "replicated"),
    ParamMap((_L + "self_attention.k_layernorm.weight",), (_Q3L + "self_attn.k_norm.weight",),
             "replicated"),
    ParamMap((_L + "self_attention.linear_proj.weight",), (_Q3L + "self_attn.o_proj.weight",),
             "row"),
    ParamMap((_L + "pre_mlp_layernorm.weight", _L + "mlp.linear_fc1.layer_norm_weight"),
             (_Q3L + "post_attention_layernorm.weight",), "replicated"),
    ParamMap((_L + "mlp.linear_fc1.weight",),
             (_Q3L + "mlp.gate_proj.weight", _Q3L + "mlp.up_proj.weight"), "gate_up"),
    ParamMap((_L + "mlp.linear_fc2.weight",), (_Q3L + "mlp.down_proj.weight",), "row"),
    ParamMap(("language_model.decoder.final_layernorm.weight",), (_Q3 + "norm.weight",),
             "replicated"),
    ParamMap(("language_model.output_layer.weight",), ("lm_head.weight",), "vocab",
             tied_hf=_Q3 + "embed_tokens.weight"),
    # the whole ViT, its merger and the deepstack mergers (`deepstack_merger_list.{k}`)
    ParamMap(("vision.model.",), ("model.visual.",), "prefix"),
)
