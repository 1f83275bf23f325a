"""Qwen3-VL-MoE: its provider, weight-mapping rows, planner presets and tiny model, as the
registry's record (`FAMILY`). The vision tower, deepstack, MRoPE and attention are Qwen3-VL's
(`families/qwen3_vl/`)."""
from __future__ import annotations

from prco_mega.families.qwen3_vl.tiny import save_qwen3vl_processor
from prco_mega.families.qwen3_vl_moe import mapping, preset, tiny
from prco_mega.families.spec import Family, TinyBuilder


def build_model(hf_config, pg_collection, **kwargs) -> list:
    """`provider.build_qwen3vl_moe_model` (Megatron is imported with the provider, on first
    call)."""
    from prco_mega.families.qwen3_vl_moe.provider import build_qwen3vl_moe_model

    return build_qwen3vl_moe_model(hf_config, pg_collection, **kwargs)


FAMILY = Family(
    model_type="qwen3_vl_moe", architectures=("Qwen3VLMoeForConditionalGeneration",),
    build_model=build_model, mapping=mapping.ROWS, nested_names=True,
    presets=preset.QWEN3_VL_MOE, dims_from_config=preset.dims_from_config,
    tiny=TinyBuilder(sizes=tiny.TinyQwen3VLMoeSizes, config=tiny.tiny_qwen3vl_moe_config,
                     build=tiny.build_tiny_qwen3vl_moe, save_processor=save_qwen3vl_processor))
