"""Qwen3-VL-MoE's weight-mapping rows: Qwen3-VL's (`families/qwen3_vl/mapping.py`) with each
layer's MLP replaced by a router and experts (the layouts: `bridge.mapping`).

Experts are mapped one by one onto the per-expert Hugging Face names that vLLM's loader accepts
(`...mlp.experts.{e}.gate_proj.weight`, `up_proj`, `down_proj`), which is also how the weight sync
names them; files hold the hub's fused `...mlp.experts.gate_up_proj` [E, H, 2I] and `down_proj`
[E, I, H] (`experts`). Megatron names: the local spec's `SequentialMLP`
(`local_experts.{e}.linear_fc1` [2I, H] = gate | up, `linear_fc2` [H, I]) and, as aliases, TE's
grouped experts (`linear_fc1.weight{e}`)."""
from __future__ import annotations

from prco_mega.bridge.param_map import ParamMap
from prco_mega.families.qwen3_vl.mapping import ROWS as QWEN3_VL_ROWS

_L = "language_model.decoder.layers.{i}."
_Q3L = "model.language_model.layers.{i}."
_EXPERT = _L + "mlp.experts.local_experts.{e}."

ROWS: tuple[ParamMap, ...] = tuple(
    r for r in QWEN3_VL_ROWS if r.megatron[0] not in (_L + "mlp.linear_fc1.weight",
                                                      _L + "mlp.linear_fc2.weight")) + (
    ParamMap((_L + "mlp.router.weight",), (_Q3L + "mlp.gate.weight",), "replicated"),
    ParamMap((_EXPERT + "linear_fc1.weight", _L + "mlp.experts.linear_fc1.weight{e}"),
             (_Q3L + "mlp.experts.{e}.gate_proj.weight", _Q3L + "mlp.experts.{e}.up_proj.weight"),
             "gate_up", experts=_Q3L + "mlp.experts.gate_up_proj"),
    ParamMap((_EXPERT + "linear_fc2.weight", _L + "mlp.experts.linear_fc2.weight{e}"),
             (_Q3L + "mlp.experts.{e}.down_proj.weight",), "row",
             experts=_Q3L + "mlp.experts.down_proj"),
)
