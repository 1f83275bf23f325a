"""Live weight sync: Megatron shards (any TP/PP) -> Hugging Face-named tensors -> the engines.

Colocated placement: every rank hosts one rank of a rollout engine (`rollout.placement`), and
vLLM's weight loader takes full checkpoint tensors on each of its ranks (it slices its own TP
part). So every rank of the world calls `sync_weights(chunks, pg_collection, hf_config, engine)`
with its own engine and builds the whole model's HF tensors from what it holds and what its
peers send it, one *unit* at a time (a decoder layer, a vision block, or a lone parameter such as
the embedding), pipeline stage by stage:

1. gather: each parameter's TP shards are all-gathered over the explicit TP group, so every TP
   rank of the owning stage holds the full parameter (nothing moves at TP=1);
2. convert: the mapping table (`bridge.mapping`) turns shards into full HF tensors (QKV GQA
   unfused, gate/up split, vocab rows concatenated), optionally cast to the engine's dtype;
3. pipeline: with PP > 1 the owning stage broadcasts the unit's HF tensors to the other stages
   over the explicit PP group (each data-parallel replica over its own group: replicas hold the
   same weights, so nothing crosses between them);
4. push: tensors are assembled into *fused groups* (every checkpoint tensor of one engine layer:
   q/k/v weights and biases; gate/up), groups into buckets of at most `bucket_bytes` (a larger
   group goes alone), and each bucket goes to this rank's `engine.update_weights`. A bucket is a
   list of whole groups and a group is released only when complete, so no bucket splits a layer.

What crosses the network per rank: the other TP ranks' shards of its own stage and the other
stages' units: the model minus what the rank holds, never more than its engine loads. Peak extra
memory is about one unit plus one bucket. Non-finite weights are refused before anything reaches
an engine, once per tensor: every rank checks its own shards and all ranks raise the same
ValueError naming the parameter (the engines are told not to scan again). After the last bucket
the engine's prefix and encoder caches are reset.
"""
from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from prco_mega.bridge.mapping import megatron_shards_to_hf, resolve, family_table, tp_split_dim
from prco_mega.timing import PhaseTimer
from prco_mega.world import device

_PHASES = ("gather", "convert", "push", "check")

DEFAULT_BUCKET_BYTES = 256 * 2**20
"""256 MiB: large enough that per-push overhead vanishes, small beside a model copy."""


# ----------------------------------------------------------------------------- stats
@dataclass(frozen=True)
class SyncStats:
    """What one sync moved into this rank's engine and where the time went."""

    tensors: int
    """HF tensors pushed."""
    bytes: int
    """Bytes pushed (after the optional cast)."""
    buckets: int
    """`engine.update_weights` calls."""
    largest_bucket_bytes: int
    gather_seconds: float
    """TP gathers and pipeline-stage transfers."""
    convert_seconds: float
    """Mapping-table conversion, cast, fused-group assembly and finiteness checks."""
    push_seconds: float
    """`engine.update_weights` calls plus the final cache reset."""
    check_seconds: float
    """The non-finite pre-check of every rank's shards (and its all-gather)."""
    seconds: float
    """Wall time of the whole sync on this rank."""
    received_bytes: int = 0
    """Weight bytes this rank received from other ranks (TP shards, other stages' units)."""

    @property
    def bytes_per_second(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else float("inf")


# ----------------------------------------------------------------------------- fused groups
def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass(frozen=True)
class FusedGroup:
    """Every checkpoint tensor of one engine layer: the smallest unit a push may carry."""

    key: str
    """Engine layer, e.g. "model.layers.3.self_attn.qkv_proj"."""
    tensors: tuple[tuple[str, torch.Tensor], ...]
    """(HF name, tensor) of every member, in the engine's member order."""

    @property
    def nbytes(self) -> int:
        return sum(nbytes(t) for _, t in self.tensors)


class GroupAssembler:
    """Collects HF tensors and releases each fused group once all its members have arrived.

    `spec`: engine layer -> its member names (`engine.weight_groups()`).
    """

    def __init__(self, spec: dict[str, list[str]]):
        self.spec = spec
        self.key_of = {name: key for key, names in spec.items() for name in names}
        self.pending: dict[str, dict[str, torch.Tensor]] = {}

    def add(self, name: str, tensor: torch.Tensor) -> FusedGroup | None:
        """Take one tensor; return its group if this completed it."""
        if name not in self.key_of:
            raise ValueError(f"weight sync: {name} is not a tensor of the engine's checkpoint")
        key = self.key_of[name]
        members = self.pending.setdefault(key, {})
        if name in members:
            raise ValueError(f"weight sync: {name} produced twice in one sync")
        members[name] = tensor
        if len(members) < len(self.spec[key]):
            return None
        del self.pending[key]
        return FusedGroup(key, tuple((n, members[n]) for n in self.spec[key]))

    def add_all(self, named: Iterable[tuple[str, torch.Tensor]]) -> list[FusedGroup]:
        return [g for g in (self.add(n, t) for n, t in named) if g is not None]

    def finish(self) -> None:
        """ValueError if a group is still incomplete (its missing members never came)."""
        if self.pending:
            key, have = next(iter(self.pending.items()))
            missing = [n for n in self.spec[key] if n not in have]
            raise ValueError(f"weight sync: fused engine layer {key} is incomplete, missing "
                             f"{missing} ({len(self.pending)} incomplete layers)")


def bucketize(groups: Iterable[FusedGroup], bucket_bytes: int) -> Iterator[list[FusedGroup]]:
    """Greedy buckets of whole groups, in arrival order (streaming: yields as soon as full).

    A bucket's bytes are <= bucket_bytes unless it is a single group larger than the bound.
    """
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes ({bucket_bytes}) must be >= 1")
    bucket: list[FusedGroup] = []
    size = 0
    for group in groups:
        if bucket and size + group.nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append(group)
        size += group.nbytes
    if bucket:
        yield bucket


def push_buckets(engine, groups: Iterable[FusedGroup], bucket_bytes: int,
                 clock: PhaseTimer | None = None) -> tuple[int, int, int, int]:
    """Push `groups` to `engine` in buckets; returns (tensors, bytes, buckets, largest bucket).
    The tensors were checked for non-finite values before the sync began (`_refuse_nonfinite`),
    so the engine does not scan them again."""
    clock = clock or PhaseTimer()
    tensors = total = count = largest = 0
    for bucket in bucketize(groups, bucket_bytes):
        named = [nt for g in bucket for nt in g.tensors]
        size = sum(g.nbytes for g in bucket)
        with clock("push"):
            engine.update_weights(named, checked_finite=True)
        tensors, total, count, largest = (tensors + len(named), total + size, count + 1,
                                          max(largest, size))
    return tensors, total, count, largest


# ----------------------------------------------------------------------------- Megatron side
_UNIT = re.compile(r"^(language_model\.decoder\.layers\.\d+\.|vision\.model\.blocks\.\d+\.)")


def unit_key(megatron_name: str) -> str:
    """Parameters moved together: one decoder layer, one vision block, else the parameter."""
    m = _UNIT.match(megatron_name)
    return m.group(1) if m else megatron_name


@dataclass
class _Ctx:
    """Per-sync constants of this rank."""

    args: dict
    """`hf_io.mapping_args(hf_config)`: model_type, heads, tied."""
    pg: object
    dtype: torch.dtype | None
    device: torch.device
    clock: PhaseTimer = field(default_factory=lambda: PhaseTimer(*_PHASES))
    received: int = 0
    """Bytes received from other ranks so far."""


def _units(chunks) -> Iterator[tuple[int, list[tuple[str, torch.Tensor]]]]:
    """(layer offset, [(Megatron name, parameter)]) per unit of this rank's chunks, in order."""
    from prco_mega.bridge.hf_io import unwrap, layer_offset, megatron_params

    for chunk in chunks:
        offset = layer_offset(unwrap(chunk))
        for _, params in itertools.groupby(megatron_params(chunk), key=lambda np: unit_key(np[0])):
            yield offset, list(params)


def _gather_shards(name: str, param: torch.Tensor, ctx: _Ctx) -> list[torch.Tensor]:
    """TP shards of `param` on every TP rank (rank order); collective over TP."""
    tp = ctx.pg.tp
    if tp.size() == 1 or tp_split_dim(name, ctx.args["model_type"]) is None:
        return [param.detach()]
    shards = [torch.empty_like(param) for _ in range(tp.size())]
    dist.all_gather(shards, param.detach().contiguous(), group=tp)
    ctx.received += nbytes(param) * (tp.size() - 1)
    return shards


def _convert_unit(offset: int, params, ctx: _Ctx) -> list[tuple[str, torch.Tensor]]:
    """HF tensors of one unit of this rank's stage, on every TP rank of it."""
    out = []
    for name, param in params:
        with ctx.clock("gather"):
            shards = _gather_shards(name, param, ctx)
        with ctx.clock("convert"):
            hf = megatron_shards_to_hf(name, shards, layer_offset=offset, **ctx.args)
            out += [(n, t if ctx.dtype is None else t.to(ctx.dtype)) for n, t in hf.items()]
    return out


def _broadcast_unit(named: list[tuple[str, torch.Tensor]] | None, src_stage: int,
                    ctx: _Ctx) -> list[tuple[str, torch.Tensor]] | None:
    """One unit from pipeline stage `src_stage` to the others of this rank's PP group: its names,
    shapes and dtypes, then its tensors (None = the stage has no more units)."""
    pp = ctx.pg.pp
    src = dist.get_global_rank(pp, src_stage)
    mine = pp.rank() == src_stage
    with ctx.clock("gather"):
        box = [None if named is None else [(n, tuple(t.shape), t.dtype) for n, t in named]]
        dist.broadcast_object_list(box, src=src, group=pp)
        if box[0] is None:
            return None
        out = []
        for i, (name, shape, dtype) in enumerate(box[0]):
            t = named[i][1].contiguous() if mine else torch.empty(shape, dtype=dtype,
                                                                  device=ctx.device)
            dist.broadcast(t, src=src, group=pp)
            ctx.received += 0 if mine else nbytes(t)
            out.append((name, t))
    return out


def _model_units(chunks, ctx: _Ctx) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """The whole model's units as HF tensors on this rank, stage by stage (collective over the
    rank's TP and PP groups)."""
    pp = ctx.pg.pp
    if pp.size() == 1:
        for offset, params in _units(chunks):
            yield _convert_unit(offset, params, ctx)
        return
    for stage in range(pp.size()):
        if pp.rank() == stage:
            for offset, params in _units(chunks):
                yield _broadcast_unit(_convert_unit(offset, params, ctx), stage, ctx)
            _broadcast_unit(None, stage, ctx)
        else:
            while (named := _broadcast_unit(None, stage, ctx)) is not None:
                yield named


# ----------------------------------------------------------------------------- checks
def _first_nonfinite(chunks, ctx: _Ctx) -> str | None:
    """This rank's first parameter that is non-finite (after the cast), with its HF names."""
    from prco_mega.bridge.hf_io import unwrap, layer_offset, megatron_params

    for chunk in chunks:
        for name, p in megatron_params(chunk):
            value = p.detach() if ctx.dtype is None else p.detach().to(ctx.dtype)
            if not bool(torch.isfinite(value).all()):
                _, hf = resolve(name, family_table(ctx.args["model_type"]),
                                layer_offset(unwrap(chunk)))
                return f"Megatron parameter {name} (HF {hf})"
    return None


def _refuse_nonfinite(chunks, ctx: _Ctx) -> None:
    """Every rank raises the same ValueError, before any push, if any rank has a bad shard
    (data-parallel replica 0 checks: the replicas hold the same weights)."""
    local = _first_nonfinite(chunks, ctx) if ctx.pg.dp.rank() == 0 else None
    found = [local] * dist.get_world_size()
    if dist.get_world_size() > 1:
        dist.all_gather_object(found, local)
    for rank, what in enumerate(found):
        if what is not None:
            raise ValueError(f"weight sync refused: {what} on rank {rank} has non-finite "
                             "values; the engines keep their weights")


# ----------------------------------------------------------------------------- entry points
@torch.no_grad()
def sync_weights(chunks, pg_collection, hf_config, engine, *,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                 dtype: torch.dtype | None = None) -> SyncStats:
    """Stream the model's weights into this rank's `engine` (a `RolloutEngine`).

    Collective: every rank of the world calls it with its own engine (colocated placement).
    `dtype` casts before anything moves (e.g. bf16 for a bf16 engine); None keeps the
    parameters' dtype. Returns this rank's `SyncStats`.
    """
    from prco_mega.bridge.hf_io import mapping_args

    if engine is None:
        raise ValueError(f"rank {dist.get_rank()} has no engine: every rank of a colocated run "
                         "hosts one engine rank and receives the weights it loads")
    t0 = time.perf_counter()
    ctx = _Ctx(mapping_args(hf_config), pg_collection, dtype, device())
    with ctx.clock("check"):
        _refuse_nonfinite(chunks, ctx)
    assembler = GroupAssembler(engine.weight_groups())

    def groups() -> Iterator[FusedGroup]:
        for named in _model_units(chunks, ctx):
            with ctx.clock("convert"):
                done = assembler.add_all(named)
            yield from done
        assembler.finish()

    tensors, total, count, largest = push_buckets(engine, groups(), bucket_bytes, ctx.clock)
    with ctx.clock("push"):
        engine.reset_caches()
    s = ctx.clock.seconds
    return SyncStats(tensors, total, count, largest, s["gather"], s["convert"], s["push"],
                     s["check"], time.perf_counter() - t0, ctx.received)
