"""Planner presets of Qwen3-VL-MoE: none yet. The planner's `ModelDims` describes dense decoders
only, so it cannot count experts, their expert-parallel shards or the dispatcher's buffers; a
Qwen3-VL-MoE config is refused by name rather than planned as a dense model (issue 28, item 5:
presets from the published Qwen3-VL-30B-A3B and 235B-A22B configs, once the planner models
experts)."""
from __future__ import annotations

from prco_mega.cluster.sizes import ModelDims

QWEN3_VL_MOE: dict[str, ModelDims] = {}


def dims_from_config(cfg: dict, name: str = "hf") -> ModelDims:
    """ValueError: the planner does not model mixture-of-experts layers yet."""
    text = cfg.get("text_config") or cfg
    experts = text.get("num_experts", text.get("num_local_experts"))
    raise ValueError(f"{name}: Qwen3-VL-MoE ({experts} experts per layer) cannot be planned yet: "
                     "the planner models dense decoders only")
