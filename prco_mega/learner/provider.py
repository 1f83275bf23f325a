"""The model provider by family: a checkpoint's `model_type` chooses the Megatron model.

`build_model(hf_config, pg_collection, **kwargs)` takes `learner.model.build_model`'s arguments and
returns its result for every family with a provider: Qwen2.5-VL (`learner.model`), Qwen3-VL
(`learner.qwen3vl`). Megatron is imported with the chosen module, not here.
"""
from __future__ import annotations

FAMILIES: tuple[str, ...] = ("qwen2_5_vl", "qwen3_vl")
"""Hugging Face `model_type`s with a Megatron provider."""


def check_family(model_type: str) -> None:
    """ValueError for a `model_type` without a provider."""
    if model_type not in FAMILIES:
        raise ValueError(f"no Megatron model for model_type {model_type!r}; known: "
                         f"{list(FAMILIES)}")


def build_model(hf_config, pg_collection, **kwargs) -> list:
    """This rank's model chunks for `hf_config` (see `learner.model.build_model`)."""
    check_family(hf_config.model_type)
    if hf_config.model_type == "qwen3_vl":
        from prco_mega.families.qwen3_vl.provider import build_qwen3vl_model

        return build_qwen3vl_model(hf_config, pg_collection, **kwargs)
    from prco_mega.learner.model import build_model as build_qwen25vl

    return build_qwen25vl(hf_config, pg_collection, **kwargs)
