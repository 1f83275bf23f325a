"""The model families, by the Hugging Face `model_type` of their checkpoints.

Each family is one folder (`qwen2_5_vl/`, `qwen3_vl/`): its Megatron provider (`provider.py`), its
weight-mapping rows (`mapping.py`), its planner presets (`preset.py`) and its tiny CPU model
(`tiny.py`), gathered in the folder's `FAMILY` record (`spec.Family`). The learner, the bridge,
the planner and the tiny checkpoint build reach a family only through `family(model_type)`.
Adding a family is a new folder and one line in `FAMILIES`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from prco_mega.families import qwen2_5_vl, qwen3_vl, qwen3_vl_moe
from prco_mega.families.spec import Family

if TYPE_CHECKING:
    from prco_mega.cluster.sizes import ModelDims

FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    qwen2_5_vl.FAMILY,
    qwen3_vl.FAMILY,
    qwen3_vl_moe.FAMILY,
)}
"""Every family by `model_type`."""


def family(model_type: str | None) -> Family:
    """The family of `model_type`; ValueError naming it and the known ones."""
    if model_type not in FAMILIES:
        raise ValueError(f"no model family for model_type {model_type!r}; "
                         f"known: {sorted(FAMILIES)}")
    return FAMILIES[model_type]


def presets() -> dict[str, ModelDims]:
    """Every family's planner presets, by name."""
    return {name: dims for f in FAMILIES.values() for name, dims in f.presets.items()}
