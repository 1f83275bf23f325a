"""Planner presets of Qwen3-VL-MoE: the public Hugging Face `config.json` values of
Qwen/Qwen3-VL-{30B-A3B,235B-A22B}-Instruct (Qwen3-VL's attention, QK-norm and ViT; every decoder
layer a router over 128 SwiGLU experts, 8 per token, no shared expert), and the rule that reads a
Qwen3-VL-MoE `config.json` dict."""
from __future__ import annotations

import dataclasses

from prco_mega.cluster.sizes import ModelDims, VisionDims
from prco_mega.families.qwen3_vl.preset import dims_from_config as qwen3vl_dims_from_config

_VIT3 = dict(depth=27, hidden=1152, intermediate=4304, heads=16, patch_size=16, family="qwen3_vl",
             position_embeddings=2304, deepstack=3)
_QWEN3_MOE = dict(vocab=151936, tie_embeddings=False, explicit_head_dim=128, qkv_bias=False,
                  qk_norm=True, num_experts=128, experts_per_token=8)
# Source: huggingface.co/Qwen/Qwen3-VL-{30B-A3B,235B-A22B}-Instruct/blob/main/config.json
# (text_config: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
# num_key_value_heads 4, head_dim 128, moe_intermediate_size, num_experts 128,
# num_experts_per_tok 8, decoder_sparse_step 1, mlp_only_layers [], vocab_size 151936;
# tie_word_embeddings false; vision_config as Qwen3-VL's with out_hidden_size = hidden_size).
# Published sizes: 31.1B total / 3.3B active and 236B / 22B (tests/test_families.py).
QWEN3_VL_MOE: dict[str, ModelDims] = {
    "qwen3-vl-30b-a3b": ModelDims(
        "qwen3-vl-30b-a3b", hidden=2048, intermediate=6144, layers=48, heads=32, kv_heads=4,
        moe_intermediate=768, vision=VisionDims(**_VIT3, out_hidden=2048), **_QWEN3_MOE),
    "qwen3-vl-235b-a22b": ModelDims(
        "qwen3-vl-235b-a22b", hidden=4096, intermediate=12288, layers=94, heads=64, kv_heads=4,
        moe_intermediate=1536, vision=VisionDims(**_VIT3, out_hidden=4096), **_QWEN3_MOE),
}


def dense_mlp_layers_of(text: dict) -> tuple[int, ...]:
    """The dense-MLP layers of a Qwen3-MoE text config, by transformers' rule: layer i is MoE when
    it is not in `mlp_only_layers` and (i + 1) is a multiple of `decoder_sparse_step`."""
    step, only = text.get("decoder_sparse_step", 1), set(text.get("mlp_only_layers") or ())
    return tuple(i for i in range(text["num_hidden_layers"]) if i in only or (i + 1) % step)


def dims_from_config(cfg: dict, name: str = "hf") -> ModelDims:
    """ModelDims of a Qwen3-VL-MoE `config.json` dict: Qwen3-VL's reading, then the experts
    (num_experts, num_experts_per_tok, moe_intermediate_size) and which layers are dense. The
    published files say `num_experts`; transformers 5 writes `num_local_experts`."""
    text = cfg.get("text_config") or cfg
    experts = text["num_experts"] if "num_experts" in text else text["num_local_experts"]
    return dataclasses.replace(
        qwen3vl_dims_from_config(cfg, name), num_experts=experts,
        experts_per_token=text["num_experts_per_tok"],
        moe_intermediate=text["moe_intermediate_size"],
        dense_mlp_layers=dense_mlp_layers_of(text))
