"""Megatron <-> Hugging Face weight mapping, as data: one table per model family, the machinery
here. Each family's rows are in `families/<family>/mapping.py`; `family_table(model_type)` finds
them through the families registry.

A `ParamMap` row (`bridge.param_map`) says which Megatron parameter (name relative to
`prco_mega.learner.model.VisionLanguageModel`, `{i}` = layer index local to the chunk) holds which
Hugging Face tensors (`{i}` = global layer index) in which layout:

- `replicated`: same tensor on every TP rank (norms, the vision tower).
- `column` / `row`: split over TP along dim 0 / dim 1 (ColumnParallel / RowParallel linears).
- `vocab`: split over TP along dim 0 = vocab rows (embedding, output layer).
- `qkv`: Megatron's fused `linear_qkv` with GQA grouping: for each KV group g the rows are
  [q heads of g (num_heads / num_kv_heads of them), k of g, v of g], each head_dim long; TP ranks
  hold contiguous groups. Hugging Face keeps q_proj, k_proj, v_proj (weights and biases) apart.
- `gate_up`: Megatron's `linear_fc1` = [gate shard; up shard] per TP rank; HF's gate_proj, up_proj.
- `prefix`: a whole subtree renamed (the vision tower), replicated.

The same table drives checkpoint load/export (`bridge.hf_io`) and live weight sync to engines.
Transformer Engine's fused specs name the pre-attention and pre-MLP norms
`linear_qkv.layer_norm_weight` / `linear_fc1.layer_norm_weight`: rows list those as aliases.
Tied embeddings: the output layer maps to the embedding (`tied_hf`) and is not exported.

Hugging Face tensors may be stored with transformers 5's nested names
(`model.language_model.*`, `model.visual.*`); `hf_legacy_name` folds them onto the legacy hub
layout (`model.layers.*`, `visual.*`) that Qwen2.5-VL's table uses. A family whose table keeps the
nested names (Qwen3-VL: its hub checkpoints and vLLM use them) says so (`Family.nested_names`);
`hub_name` applies the family's rule.
Every slice read from a checkpoint is contiguous, so readers can fetch only the bytes of one shard.

Experts (mixture-of-experts families): a row with `experts` maps one expert's Megatron parameter
(`{e}` = its index on this rank; the global index is `expert_offset + e`) to that expert's own
Hugging Face tensors, the per-expert names vLLM also accepts (`...mlp.experts.{e}.gate_proj.weight`
[I, H], `up_proj` [I, H], `down_proj` [H, I]): `gate_up` and `row` as for a dense MLP, split over
the expert-TP group. Files hold every expert of a layer in one fused tensor (`row.experts`), in
one of two layouts:
- the hub's (the published checkpoints, and what vLLM loads): `gate_up_proj` [E, H, 2I] with
  expert e = [gate_e^T | up_e^T], `down_proj` [E, I, H] with expert e = down_e^T;
- transformers' (what `save_pretrained` of transformers 5 writes, its in-memory layout):
  `gate_up_proj` [E, 2I, H] = [gate_e; up_e], `down_proj` [E, H, I] = down_e.
`fused_layout` tells them apart by shape and refuses a tensor that reads the same in both
(hidden == 2 * moe_intermediate for gate_up, hidden == moe_intermediate for down) instead of
guessing; `expert_tensor` reads one expert out of either; `fuse_experts` writes the hub's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from prco_mega.bridge.param_map import ParamMap
from prco_mega.families import FAMILIES, family


def family_table(model_type: str) -> tuple[ParamMap, ...]:
    """The rows of `model_type`'s family (`families.family`: ValueError for an unknown type)."""
    return family(model_type).mapping


@dataclass(frozen=True)
class Heads:
    """Attention sizes the `qkv` layout needs."""

    num_heads: int
    num_kv_heads: int


def hf_legacy_name(name: str) -> str:
    """Fold transformers-5 nested names onto the hub layout (`model.layers.*`, `visual.*`)."""
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    if name.startswith("model.visual."):
        return name[len("model."):]
    return name


def hub_name(name: str, model_type: str | None) -> str:
    """A stored tensor name in the naming of `model_type`'s table (the legacy layout for None or
    a type without a family)."""
    nested = model_type in FAMILIES and FAMILIES[model_type].nested_names
    return name if nested else hf_legacy_name(name)


def _pattern(template: str) -> re.Pattern:
    escaped = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)")
    return re.compile(escaped.replace(r"\{e\}", r"(?P<e>\d+)") + "$")


def resolve(megatron_name: str, table: tuple[ParamMap, ...], layer_offset: int = 0,
            expert_offset: int = 0) -> tuple[ParamMap, list[str]]:
    """(row, HF names) for a Megatron parameter; local layer index j becomes layer_offset + j,
    local expert index k becomes expert_offset + k."""
    for row in table:
        for template in row.megatron:
            if row.kind == "prefix":
                if megatron_name.startswith(template):
                    return row, [row.hf[0] + megatron_name[len(template):]]
                continue
            m = _pattern(template).match(megatron_name)
            if m:
                found = m.groupdict()
                layer = int(found["i"]) + layer_offset if "i" in found else None
                expert = int(found["e"]) + expert_offset if "e" in found else None
                return row, [h.format(i=layer, e=expert) for h in row.hf]
    raise KeyError(f"no mapping row for Megatron parameter {megatron_name!r}")


def is_expert(megatron_name: str, model_type: str) -> bool:
    """True for an expert's parameter: split over the expert-TP group, held by one expert-parallel
    rank."""
    row, _ = resolve(megatron_name, family_table(model_type))
    return row.experts is not None


Reader = Callable[[str], object]
"""hf_name -> a tensor or a lazily sliced tensor (safetensors' `get_slice`): must support
`get_shape()` or `.shape`, and basic slicing `x[a:b]`, `x[:, a:b]`."""


def _shape(x) -> list[int]:
    return list(x.get_shape()) if hasattr(x, "get_shape") else list(x.shape)


def _split_range(n: int, rank: int, size: int, what: str) -> tuple[int, int]:
    if n % size:
        raise ValueError(f"{what}: size {n} does not divide by tensor_parallel ({size})")
    part = n // size
    return rank * part, (rank + 1) * part


def hf_to_megatron_shard(megatron_name: str, read: Reader, *, model_type: str, tp_rank: int,
                         tp_size: int, layer_offset: int = 0, heads: Heads | None = None,
                         tied: bool = False, expert_offset: int = 0) -> torch.Tensor:
    """This TP rank's shard of a Megatron parameter, read from HF tensors through `read` (an
    expert's: `tp_*` of the expert-TP group, `expert_offset` = the rank's first expert)."""
    row, names = resolve(megatron_name, family_table(model_type), layer_offset, expert_offset)
    if row.tied_hf and tied:
        names = [row.tied_hf]
    kind = row.kind
    if kind in ("replicated", "prefix"):
        return _full(read(names[0]))
    if kind in ("column", "vocab"):
        src = read(names[0])
        a, b = _split_range(_shape(src)[0], tp_rank, tp_size, names[0])
        return _full(src[a:b])
    if kind == "row":
        src = read(names[0])
        a, b = _split_range(_shape(src)[1], tp_rank, tp_size, names[0])
        return _full(src[:, a:b])
    if kind == "gate_up":
        parts = []
        for name in names:
            src = read(name)
            a, b = _split_range(_shape(src)[0], tp_rank, tp_size, name)
            parts.append(_full(src[a:b]))
        return torch.cat(parts, dim=0)
    if kind == "qkv":
        return _qkv_shard([read(n) for n in names], heads, tp_rank, tp_size, names[0])
    raise AssertionError(kind)


def _full(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else x[...]


def _qkv_shard(qkv, heads: Heads, tp_rank: int, tp_size: int, what: str) -> torch.Tensor:
    """[g_local * (q_per_g + 2) * hd, ...]: per local KV group, its q heads then k then v."""
    if heads is None:
        raise ValueError(f"{what}: the qkv layout needs Heads(num_heads, num_kv_heads)")
    q, k, v = qkv
    groups, q_per_g = heads.num_kv_heads, heads.num_heads // heads.num_kv_heads
    head_dim = _shape(q)[0] // heads.num_heads
    g0, g1 = _split_range(groups, tp_rank, tp_size, f"{what} KV heads")
    qs = _full(q[g0 * q_per_g * head_dim:g1 * q_per_g * head_dim])
    ks = _full(k[g0 * head_dim:g1 * head_dim])
    vs = _full(v[g0 * head_dim:g1 * head_dim])
    rest = qs.shape[1:]
    n = g1 - g0
    fused = torch.cat([qs.reshape(n, q_per_g * head_dim, *rest), ks.reshape(n, head_dim, *rest),
                       vs.reshape(n, head_dim, *rest)], dim=1)
    return fused.reshape(-1, *rest)


def megatron_shards_to_hf(megatron_name: str, shards: list[torch.Tensor], *, model_type: str,
                          layer_offset: int = 0, heads: Heads | None = None,
                          tied: bool = False, expert_offset: int = 0) -> dict[str, torch.Tensor]:
    """HF tensors from the TP shards [tp_size] of one Megatron parameter (rank order; an
    expert's: its expert-TP shards, named by its global expert index).

    Returns {} for the output layer of a tied model: the embedding is exported instead.
    """
    row, names = resolve(megatron_name, family_table(model_type), layer_offset, expert_offset)
    if row.tied_hf and tied:
        return {}
    kind = row.kind
    if kind in ("replicated", "prefix"):
        return {names[0]: shards[0]}
    if kind in ("column", "vocab"):
        return {names[0]: torch.cat(shards, dim=0)}
    if kind == "row":
        return {names[0]: torch.cat(shards, dim=1)}
    if kind == "gate_up":
        halves = [s.chunk(2, dim=0) for s in shards]
        return {names[0]: torch.cat([h[0] for h in halves]),
                names[1]: torch.cat([h[1] for h in halves])}
    if kind == "qkv":
        return dict(zip(names, _qkv_unfuse(shards, heads, megatron_name)))
    raise AssertionError(kind)


def _qkv_unfuse(shards: list[torch.Tensor], heads: Heads, what: str):
    if heads is None:
        raise ValueError(f"{what}: the qkv layout needs Heads(num_heads, num_kv_heads)")
    fused = torch.cat(shards, dim=0)
    q_per_g = heads.num_heads // heads.num_kv_heads
    rest = fused.shape[1:]
    head_dim = fused.shape[0] // (heads.num_kv_heads * (q_per_g + 2))
    grouped = fused.reshape(heads.num_kv_heads, (q_per_g + 2) * head_dim, *rest)
    q, k, v = grouped.split([q_per_g * head_dim, head_dim, head_dim], dim=1)
    return (q.reshape(-1, *rest).contiguous(), k.reshape(-1, *rest).contiguous(),
            v.reshape(-1, *rest).contiguous())


def tp_split_dim(megatron_name: str, model_type: str) -> int | None:
    """Dim along which a parameter is split over TP (None: replicated). Fused kinds split dim 0."""
    row, _ = resolve(megatron_name, family_table(model_type))
    return {"replicated": None, "prefix": None, "row": 1}.get(row.kind, 0)


# ----------------------------------------------------------------------------- fused expert files
@dataclass(frozen=True)
class ExpertName:
    """A per-expert Hugging Face name, parsed: member `member` of `row.hf` of layer `layer`,
    expert `expert`."""

    row: ParamMap
    member: int
    layer: int
    expert: int

    @property
    def fused(self) -> str:
        """The file tensor holding this layer's experts."""
        return self.row.experts.format(i=self.layer)


def expert_rows(model_type: str | None) -> tuple[ParamMap, ...]:
    """The rows of `model_type`'s experts (none for a dense family or an unknown type)."""
    fam = FAMILIES.get(model_type)
    return tuple(r for r in fam.mapping if r.experts) if fam else ()


def parse_expert_name(name: str, model_type: str | None) -> ExpertName | None:
    """`name` as a per-expert tensor of `model_type`'s table, or None."""
    for row in expert_rows(model_type):
        for member, template in enumerate(row.hf):
            m = _pattern(template).match(name)
            if m:
                return ExpertName(row, member, int(m["i"]), int(m["e"]))
    return None


def fused_row(name: str, model_type: str | None) -> ParamMap | None:
    """The expert row whose fused file tensor `name` is, or None."""
    for row in expert_rows(model_type):
        if _pattern(row.experts).match(name):
            return row
    return None


def fused_layout(row: ParamMap, shape, hidden: int, moe_ffn: int, name: str) -> str:
    """"hub" or "transformers": the layout of the fused expert tensor `name` of `shape`, with
    hidden size `hidden` and expert width `moe_ffn`. ValueError when the shape fits neither, or
    both (the sizes make the layouts read alike: refusing beats a silently transposed expert)."""
    n = shape[0]
    if row.kind == "gate_up":
        hub, tf = (n, hidden, 2 * moe_ffn), (n, 2 * moe_ffn, hidden)
    else:
        hub, tf = (n, moe_ffn, hidden), (n, hidden, moe_ffn)
    if hub == tf:
        raise ValueError(
            f"{name}: with hidden_size {hidden} and moe_intermediate_size {moe_ffn} the hub's "
            f"expert layout {hub} and transformers' {tf} have the same shape, so the file does "
            "not say which it holds; refusing to guess")
    layouts = {hub: "hub", tf: "transformers"}
    if tuple(shape) not in layouts:
        raise ValueError(f"{name} has shape {tuple(shape)}: neither the hub's expert layout {hub} "
                         f"nor transformers' {tf} (hidden_size {hidden}, moe_intermediate_size "
                         f"{moe_ffn})")
    return layouts[tuple(shape)]


def hub_shape(shape) -> tuple[int, ...]:
    """The hub-layout shape of a fused expert tensor held in transformers' layout (and back)."""
    return (shape[0], shape[2], shape[1])


def expert_tensor(row: ParamMap, layout: str, fused, expert: int, member: int,
                  moe_ffn: int) -> torch.Tensor:
    """Expert `expert`'s tensor `row.hf[member]` out of the fused tensor `fused` (a tensor or a
    lazy safetensors slice: only that expert's bytes are read) held in `layout`."""
    if row.kind == "gate_up":
        a, b = member * moe_ffn, (member + 1) * moe_ffn
        if layout == "hub":
            return _full(fused[expert, :, a:b]).t().contiguous()
        return _full(fused[expert, a:b])
    return _full(fused[expert]).t().contiguous() if layout == "hub" else _full(fused[expert])


def fuse_experts(row: ParamMap, per_expert: list[list[torch.Tensor]]) -> torch.Tensor:
    """The hub-layout fused tensor of one layer from `per_expert[e]` = expert e's `row.hf`
    tensors."""
    if row.kind == "gate_up":
        return torch.stack([torch.cat([g.t(), u.t()], dim=1) for g, u in per_expert])
    return torch.stack([d.t() for (d,) in per_expert]).contiguous()


def fold_expert_shapes(shapes: dict[str, tuple], model_type: str) -> dict[str, tuple]:
    """{name: shape} with per-expert entries replaced by their layer's fused hub-layout entry
    (its expert count = the experts present), e.g. to compare what a mapping reads with a file."""
    out, found = {}, {}
    for name, shape in shapes.items():
        parsed = parse_expert_name(name, model_type)
        if parsed is None:
            out[name] = tuple(shape)
            continue
        entry = found.setdefault(parsed.fused, [parsed.row, set(), None])
        entry[1].add(parsed.expert)
        entry[2] = tuple(shape)  # gate and up [I, H], or down [H, I]
    for fused, (row, experts, (a, b)) in found.items():
        out[fused] = (len(experts), b, 2 * a) if row.kind == "gate_up" else (len(experts), b, a)
    return out
