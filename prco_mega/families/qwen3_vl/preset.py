"""Planner presets of Qwen3-VL (dense): the public Hugging Face `config.json` values of
Qwen/Qwen3-VL-{8B,32B}-Instruct (Qwen2.5-VL's keys, and head_dim; no QKV bias, QK-norm; vision:
patch 16, num_position_embeddings, deepstack_visual_indexes)."""
from __future__ import annotations

import dataclasses

from prco_mega.cluster.sizes import ModelDims, VisionDims, shared_dims_from_hf_config

_VIT3 = dict(depth=27, hidden=1152, intermediate=4304, heads=16, patch_size=16, family="qwen3_vl",
             position_embeddings=2304, deepstack=3)
_QWEN3 = dict(vocab=151936, tie_embeddings=False, explicit_head_dim=128, qkv_bias=False,
              qk_norm=True)
# Source: huggingface.co/Qwen/Qwen3-VL-{8B,32B}-Instruct/blob/main/config.json
QWEN3_VL: dict[str, ModelDims] = {
    "qwen3-vl-8b": ModelDims("qwen3-vl-8b", hidden=4096, intermediate=12288, layers=36, heads=32,
                             kv_heads=8, vision=VisionDims(**_VIT3, out_hidden=4096), **_QWEN3),
    "qwen3-vl-32b": ModelDims("qwen3-vl-32b", hidden=5120, intermediate=25600, layers=64,
                              heads=64, kv_heads=8, vision=VisionDims(**_VIT3, out_hidden=5120),
                              **_QWEN3),
}


def dims_from_config(cfg: dict, name: str = "hf") -> ModelDims:
    """ModelDims of a Qwen3-VL `config.json` dict: the shared keys, then head_dim from the config,
    QKV bias as it says (none in the released models), QK-norm and Qwen3-VL's ViT."""
    text, v = cfg.get("text_config") or cfg, cfg.get("vision_config")
    dims = shared_dims_from_hf_config(cfg, name)
    vision = None if v is None else dataclasses.replace(
        dims.vision, family="qwen3_vl", position_embeddings=v.get("num_position_embeddings", 2304),
        deepstack=len(v.get("deepstack_visual_indexes", ())))
    return dataclasses.replace(dims, vision=vision, explicit_head_dim=text.get("head_dim"),
                               qkv_bias=bool(text.get("attention_bias", False)), qk_norm=True)
