"""Qwen3-VL (dense): its provider, weight-mapping rows, planner presets and tiny model, as the
registry's record (`FAMILY`)."""
from __future__ import annotations

from prco_mega.families.qwen3_vl import mapping, preset, tiny
from prco_mega.families.spec import Family, TinyBuilder


def build_model(hf_config, pg_collection, **kwargs) -> list:
    """`provider.build_qwen3vl_model` (Megatron is imported with the provider, on first call)."""
    from prco_mega.families.qwen3_vl.provider import build_qwen3vl_model

    return build_qwen3vl_model(hf_config, pg_collection, **kwargs)


FAMILY = Family(
    model_type="qwen3_vl", architectures=("Qwen3VLForConditionalGeneration",),
    build_model=build_model, mapping=mapping.ROWS, nested_names=True,
    presets=preset.QWEN3_VL, dims_from_config=preset.dims_from_config,
    tiny=TinyBuilder(sizes=tiny.TinyQwen3VLSizes, config=tiny.tiny_qwen3vl_config,
                     build=tiny.build_tiny_qwen3vl, save_processor=tiny.save_qwen3vl_processor))
