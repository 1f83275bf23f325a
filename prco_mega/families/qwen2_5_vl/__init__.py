"""Qwen2.5-VL: its provider, weight-mapping rows, planner presets and tiny model, as the
registry's record (`FAMILY`)."""
from __future__ import annotations

from prco_mega.families.qwen2_5_vl import mapping, preset, tiny
from prco_mega.families.spec import Family, TinyBuilder


def build_model(hf_config, pg_collection, **kwargs) -> list:
    """`provider.build_qwen25vl_model` (Megatron is imported with the provider, on first call)."""
    from prco_mega.families.qwen2_5_vl.provider import build_qwen25vl_model

    return build_qwen25vl_model(hf_config, pg_collection, **kwargs)


FAMILY = Family(
    model_type="qwen2_5_vl", architectures=("Qwen2_5_VLForConditionalGeneration",),
    build_model=build_model, mapping=mapping.ROWS, nested_names=False,
    presets=preset.QWEN25_VL, dims_from_config=preset.dims_from_config,
    tiny=TinyBuilder(sizes=tiny.TinySizes, config=tiny.tiny_qwen25vl_config,
                     build=tiny.build_tiny_qwen25vl, save_processor=tiny.save_qwen25vl_processor))
