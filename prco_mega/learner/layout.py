"""Parallel layout: the one rule set that judges a layout against the model, run before any
process group or child process exists.

`check_layout` is pure (no torch) and is the only place a layout is refused: `prco-mega plan` and
`prco-mega launch` (through the planner), `prco-mega convert` (before it starts torchrun) and the
learner (`learner.parallel.init_parallel`, before its process group) all call it, so a layout
that cannot split the model fails in a second with the numbers, not minutes into a multi-node
start. Its rules, each a ValueError naming the numbers:
- the world is a multiple of tp * pp (the rest is data parallel);
- TP divides the attention heads, the KV heads (Megatron splits query groups, it does not
  replicate them), the MLP width and the vocabulary; the KV heads divide the heads (GQA);
- PP (times VPP) divides the decoder layers; VPP needs a pipeline;
- deepstack (Qwen3-VL): the decoder layers that receive vision features are on the first stage,
  with the vision tower (`check_deepstack_placement`);
- experts (mixture-of-experts models): EP divides the experts, expert-TP (default: TP) divides
  each expert's width, and EP x expert-TP divides the TP x DP ranks of a pipeline stage, over
  which Megatron lays the experts (`parallel_state.initialize_model_parallel`: the world must
  divide by expert-TP x EP x PP); a dense model takes neither;
- the rollout engine's TP divides the attention heads.

Vocabulary: Megatron shards the embedding and output layer over TP by vocab rows. We require
`vocab_size % tp == 0` instead of padding the vocab (Megatron's `make_vocab_size_divisible_by`):
padded output rows would add columns to the softmax, so log-probs would no longer equal the Hugging
Face model's. Every Qwen2.5-VL checkpoint's vocab (151936, 152064) divides by 8.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LayoutDims:
    """The sizes of a model that a parallel layout must divide."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    hidden_size: int
    ffn_hidden_size: int
    deepstack_levels: int = 0
    """Qwen3-VL: decoder layers 0 .. levels-1 add deepstack vision features (0: none)."""
    num_experts: int = 0
    """Mixture of experts: routed experts per decoder layer (0: a dense MLP)."""
    moe_ffn_hidden_size: int = 0
    """Mixture of experts: the width of each expert's MLP (`moe_intermediate_size`)."""


@dataclass(frozen=True)
class Layout:
    """A validated parallel layout."""

    world_size: int
    tp: int
    """Tensor-parallel size."""
    pp: int
    """Pipeline-parallel size."""
    vpp: int | None
    """Virtual pipeline chunks per pipeline rank (None: no interleaving)."""
    dp: int
    """Data-parallel size = world_size / (tp * pp)."""
    layers_per_chunk: int
    """Decoder layers in each model chunk (num_layers / (pp * (vpp or 1)))."""
    ep: int = 1
    """Expert-parallel size (each rank holds num_experts / ep experts)."""
    etp: int = 1
    """Expert-tensor-parallel size (each expert's MLP split over this many ranks)."""


def _get(cfg: Any, name: str) -> Any:
    return cfg.get(name) if isinstance(cfg, dict) else getattr(cfg, name, None)


def layout_dims(model: Any) -> LayoutDims:
    """`LayoutDims` of a Hugging Face config (VL or text-only; the object or its config.json
    dict) or of a tiny model's sizes (`TinySizes` naming: num_layers, num_heads, ...)."""
    if isinstance(model, LayoutDims):
        return model
    text = _get(model, "text_config") or model
    if isinstance(text, dict) and "num_hidden_layers" not in text:
        raise ValueError("the model config has no num_hidden_layers (at its top or in "
                         "text_config): not a decoder's config")
    if _get(text, "num_hidden_layers") is None:  # TinySizes naming
        return LayoutDims(model.num_layers, model.num_heads, model.num_kv_heads,
                          model.vocab_size, model.hidden_size, model.intermediate_size,
                          len(getattr(model, "deepstack_visual_indexes", ())),
                          getattr(model, "num_experts", 0),
                          getattr(model, "moe_intermediate_size", 0))
    heads = _get(text, "num_attention_heads")
    vision = _get(model, "vision_config") or {}
    # transformers writes Qwen3-VL-MoE's num_experts as num_local_experts (its attribute map)
    experts = _get(text, "num_experts") or _get(text, "num_local_experts") or 0
    return LayoutDims(_get(text, "num_hidden_layers"), heads,
                      _get(text, "num_key_value_heads") or heads, _get(text, "vocab_size"),
                      _get(text, "hidden_size"), _get(text, "intermediate_size"),
                      len(_get(vision, "deepstack_visual_indexes") or ()), experts,
                      _get(text, "moe_intermediate_size") or 0 if experts else 0)


def check_layout(model: Any, world_size: int, tp: int, pp: int, vpp: int | None = None, *,
                 engine_tp: int | None = None, ep: int = 1, etp: int | None = None) -> Layout:
    """Refuse a (tp, pp, vpp) layout of `world_size` ranks with expert parallel `ep` and expert
    tensor parallel `etp` (None: tp), and a rollout engine of `engine_tp` ranks, that cannot
    split `model` (anything `layout_dims` reads); ValueError names the numbers. Returns the
    layout."""
    d = layout_dims(model)
    for name, value in (("tensor_parallel", tp), ("pipeline_parallel", pp),
                        ("world_size", world_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if world_size % (tp * pp):
        raise ValueError(f"world_size ({world_size}) must be a multiple of tensor_parallel * "
                         f"pipeline_parallel ({tp} * {pp} = {tp * pp})")
    _check_tensor_parallel(d, tp)
    etp = _check_experts(d, world_size, tp, pp, ep, tp if etp is None else etp)
    layers_per_chunk = _check_pipeline(d, pp, vpp)
    if engine_tp is not None:
        _check_divides("engine.tensor_parallel_size", engine_tp, "num_attention_heads",
                       d.num_heads)
    return Layout(world_size, tp, pp, vpp, world_size // (tp * pp), layers_per_chunk, ep, etp)


def _check_tensor_parallel(d: LayoutDims, tp: int) -> None:
    _check_divides("tensor_parallel", tp, "num_attention_heads", d.num_heads)
    _check_divides("tensor_parallel", tp, "num_key_value_heads", d.num_kv_heads)
    _check_divides("tensor_parallel", tp, "vocab_size", d.vocab_size,
                   " (vocab padding is not done: it would change the softmax)")
    if not d.num_experts:  # a mixture of experts has no dense MLP to split
        _check_divides("tensor_parallel", tp, "intermediate_size", d.ffn_hidden_size)
    _check_divides("num_key_value_heads", d.num_kv_heads, "num_attention_heads", d.num_heads)


def _check_experts(d: LayoutDims, world_size: int, tp: int, pp: int, ep: int, etp: int) -> int:
    """The expert-TP size, once EP and expert-TP split the experts and fit Megatron's layout."""
    for name, value in (("expert_parallel", ep), ("expert_tensor_parallel", etp)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not d.num_experts:
        if ep != 1 or etp != tp:
            raise ValueError(f"expert_parallel ({ep}) and expert_tensor_parallel ({etp}) need a "
                             "mixture-of-experts model; this one has a dense MLP")
        return etp
    _check_divides("expert_parallel", ep, "num_experts", d.num_experts)
    _check_divides("expert_tensor_parallel", etp, "moe_intermediate_size", d.moe_ffn_hidden_size)
    stage = world_size // pp
    if stage % (ep * etp):
        raise ValueError(
            f"expert_parallel * expert_tensor_parallel ({ep} * {etp} = {ep * etp}) must divide "
            f"tensor_parallel * data_parallel ({tp} * {stage // tp} = {stage}): Megatron lays "
            "the experts over the ranks of one pipeline stage")
    return etp


def _check_pipeline(d: LayoutDims, pp: int, vpp: int | None) -> int:
    """Decoder layers per model chunk, once PP and VPP split them and deepstack fits."""
    if vpp is not None and (vpp < 1 or pp < 2):
        raise ValueError(f"virtual_pipeline ({vpp}) needs pipeline_parallel >= 2 (got {pp}) "
                         "and vpp >= 1")
    chunks = pp * (vpp or 1)
    if d.num_layers % chunks:
        what = (f"pipeline_parallel ({pp})" if vpp is None else
                f"pipeline_parallel * virtual_pipeline ({pp} * {vpp} = {chunks})")
        raise ValueError(f"{what} must divide num_hidden_layers ({d.num_layers})")
    per_chunk = d.num_layers // chunks
    if d.deepstack_levels:
        check_deepstack_placement(d.deepstack_levels, per_chunk, d.num_layers, pp, vpp)
    return per_chunk


def _check_divides(a_name: str, a: int, b_name: str, b: int, why: str = "") -> None:
    if b % a:
        raise ValueError(f"{a_name} ({a}) must divide {b_name} ({b}){why}")


def check_deepstack_placement(levels: int, first_stage_layers: int, num_layers: int, pp: int,
                              vpp: int | None) -> None:
    """ValueError unless the first pipeline stage (which holds the ViT) holds the `levels`
    decoder layers that receive deepstack features (they cannot travel between stages)."""
    if levels > num_layers:
        raise ValueError(f"deepstack feeds {levels} decoder layers but the model has only "
                         f"{num_layers}")
    if levels > first_stage_layers:
        chunks = f" x {vpp} virtual stages" if vpp else ""
        raise ValueError(
            f"Qwen3-VL adds deepstack features after decoder layers 0-{levels - 1} ({levels} "
            f"levels), which must be on the first pipeline stage with the vision tower, but "
            f"with pipeline_parallel={pp}{chunks} the first stage holds {first_stage_layers} of "
            f"{num_layers} layers: use fewer stages or put >= {levels} layers on the first")
