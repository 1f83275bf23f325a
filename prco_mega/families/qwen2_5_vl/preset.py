"""Planner presets of Qwen2.5-VL: the public Hugging Face `config.json` values of
Qwen/Qwen2.5-VL-{3B,7B,32B,72B}-Instruct (text: hidden_size, intermediate_size,
num_hidden_layers, num_attention_heads, num_key_value_heads, vocab_size, tie_word_embeddings;
vision_config: depth, hidden_size, intermediate_size, num_heads, out_hidden_size, patch_size 14,
temporal_patch_size 2, spatial_merge_size 2)."""
from __future__ import annotations

from prco_mega.cluster.sizes import ModelDims, VisionDims, shared_dims_from_hf_config

_VIT = dict(depth=32, hidden=1280, intermediate=3420, heads=16)
# Source: huggingface.co/Qwen/Qwen2.5-VL-{3B,7B,32B,72B}-Instruct/blob/main/config.json
QWEN25_VL: dict[str, ModelDims] = {
    "qwen2.5-vl-3b": ModelDims("qwen2.5-vl-3b", hidden=2048, intermediate=11008, layers=36,
                               heads=16, kv_heads=2, vocab=151936, tie_embeddings=True,
                               vision=VisionDims(**_VIT, out_hidden=2048)),
    "qwen2.5-vl-7b": ModelDims("qwen2.5-vl-7b", hidden=3584, intermediate=18944, layers=28,
                               heads=28, kv_heads=4, vocab=152064, tie_embeddings=False,
                               vision=VisionDims(**_VIT, out_hidden=3584)),
    "qwen2.5-vl-32b": ModelDims("qwen2.5-vl-32b", hidden=5120, intermediate=27648, layers=64,
                                heads=40, kv_heads=8, vocab=152064, tie_embeddings=False,
                                vision=VisionDims(**_VIT, out_hidden=5120)),
    "qwen2.5-vl-72b": ModelDims("qwen2.5-vl-72b", hidden=8192, intermediate=29568, layers=80,
                                heads=64, kv_heads=8, vocab=152064, tie_embeddings=False,
                                vision=VisionDims(**_VIT, out_hidden=8192)),
}

dims_from_config = shared_dims_from_hf_config
"""A Qwen2.5-VL `config.json` holds only the shared keys, read with Qwen2.5-VL's conventions."""
