"""Live weight sync: Megatron shards (any TP/PP) -> Hugging Face-named tensors -> the engines.

Colocated placement: every rank hosts one rank of a rollout engine (`rollout.placement`). vLLM's
weight loader takes checkpoint-shaped tensors and narrows them to its own TP rank's rows, so every
rank of the world calls `sync_weights(chunks, pg_collection, hf_config, engine)` with its own
engine and fetches only the rows its engine rank loads (`bridge.slices`), one *unit* at a time (a
decoder layer, a vision block, or a lone parameter such as the embedding), pipeline stage by
stage:

1. convert: the mapping table (`bridge.mapping`) turns this rank's own TP shard into the HF rows it
   holds (QKV GQA unfused, gate/up split), optionally cast to the engine's dtype;
2. fetch: over the explicit TP group, each rank sends each peer the intersection of its rows with
   the rows that peer's stage's engine ranks load, in one `all_to_all_single`. When the engine is
   split like the learner (same TP, same ranks) nothing moves; an engine of TP 1 under a learner
   of TP 2 receives the other half; replicated tensors never move;
3. pipeline: with PP > 1 the owning stage broadcasts the unit's rows to the other stages over the
   explicit PP group (each data-parallel replica over its own group: replicas hold the same
   weights, so nothing crosses between them). The owner fetched the hull of its PP group's needs;
4. push: each tensor is laid into a checkpoint-shaped buffer (rows the engine rank does not load
   are NaN, so a wrong row rule poisons the output instead of loading stale values), tensors
   are assembled into *fused groups* (every checkpoint tensor of one engine layer: q/k/v weights
   and biases; gate/up), groups into buckets of at most `bucket_bytes` (a larger group goes
   alone), and each bucket goes to this rank's `engine.update_weights`. A bucket is a list of
   whole groups and a group is released only when complete, so no bucket splits a layer.

What crosses the network per rank: the rows its engine loads that the rank does not hold (other TP
shards, other stages' units), never more than its engine loads (`SyncStats.engine_bytes`), except
that a pipeline group whose stages feed different engine ranks shares one hull of rows. Peak extra
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

from prco_mega.bridge.mapping import megatron_shards_to_hf, resolve, family_table
from prco_mega.bridge.slices import (Span, engine_span, full_shape_of, held_span, hull, intersect,
                                     kind_of, local_heads)
from prco_mega.tracking.timing import PhaseTimer
from prco_mega.dist.world import all_gather, device

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
    engine_bytes: int = 0
    """Weight bytes this rank's engine rank loads (its rows of every tensor): what a rank
    needs to receive at most, beside transfer granularity."""

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
    slot: tuple[int, int] = (0, 1)
    """(rank within its engine, engine TP size) of this rank."""
    tp_slots: list = field(default_factory=list)
    """Per TP peer (TP rank order): the slots of the engine ranks on its PP group, whose rows
    that peer fetches."""
    clock: PhaseTimer = field(default_factory=lambda: PhaseTimer(*_PHASES))
    received: int = 0
    """Bytes received from other ranks so far."""
    engine_bytes: int = 0
    """Bytes of the rows this rank's engine loads, so far."""


def _units(chunks) -> Iterator[tuple[int, list[tuple[str, torch.Tensor]]]]:
    """(layer offset, [(Megatron name, parameter)]) per unit of this rank's chunks, in order."""
    from prco_mega.bridge.hf_io import unwrap, layer_offset, megatron_params

    for chunk in chunks:
        offset = layer_offset(unwrap(chunk))
        for _, params in itertools.groupby(megatron_params(chunk), key=lambda np: unit_key(np[0])):
            yield offset, list(params)


@dataclass
class Slab:
    """Some rows of one HF tensor: what a rank holds, fetched or received of it."""

    name: str
    kind: str
    """The mapping row's layout (`bridge.mapping`)."""
    member: int
    """Place among the row's HF names (q, k, v = 0, 1, 2; gate, up = 0, 1)."""
    shape: tuple[int, ...]
    """The full HF tensor's shape."""
    span: Span
    data: torch.Tensor
    """The rows `span` of the full tensor."""

    def piece(self, part: Span) -> torch.Tensor:
        """Rows `part` (inside `span`) of this slab's data."""
        if self.span.whole and part.whole:
            return self.data
        start = part.start - (0 if self.span.whole else self.span.start)
        return self.data.narrow(part.dim, start, part.stop - part.start)


def _local_slabs(offset: int, params, ctx: _Ctx) -> list[Slab]:
    """This rank's part of the HF tensors of one unit, in HF layout (no communication)."""
    tp = ctx.pg.tp
    args = ctx.args
    heads = args["heads"] if tp.size() == 1 else local_heads(args["heads"], tp.size())
    out = []
    for name, param in params:
        kind = kind_of(name, args["model_type"])
        hf = megatron_shards_to_hf(name, [param.detach()], model_type=args["model_type"],
                                   layer_offset=offset, heads=heads, tied=args["tied"])
        for member, (hf_name, t) in enumerate(hf.items()):
            shape = full_shape_of(kind, tuple(t.shape), tp.size())
            span = held_span(kind, shape, tp.rank(), tp.size(), hf_name)
            out.append(Slab(hf_name, kind, member, shape, span,
                            t if ctx.dtype is None else t.to(ctx.dtype)))
    return out


def _need(slab: Slab, slots: list[tuple[int, int]], ctx: _Ctx) -> Span:
    """Rows of `slab`'s tensor that the engine ranks `slots` [(engine rank, engine TP)] load."""
    return hull([engine_span(slab.kind, slab.member, slab.shape, r, t, ctx.args["heads"],
                             slab.name) for r, t in slots])


def _fetch(slabs: list[Slab], ctx: _Ctx) -> list[Slab]:
    """Each rank of the TP group ends with the rows its stage's engine ranks load (`ctx.tp_slots`):
    every rank sends each peer the intersection of what it holds with what the peer needs, in one
    `all_to_all_single` per dtype. Nothing moves for rows a rank already holds (matching TP sizes,
    replicated tensors), so an engine split like the learner receives no TP traffic."""
    tp = ctx.pg.tp
    me, n = tp.rank(), tp.size()
    needs = [[_need(s, ctx.tp_slots[j], ctx) for j in range(n)] for s in slabs]
    out: list[Slab | None] = [None] * len(slabs)
    for dtype in dict.fromkeys(s.data.dtype for s in slabs):
        idx = [i for i, s in enumerate(slabs) if s.data.dtype == dtype]
        send: list[list[torch.Tensor]] = [[] for _ in range(n)]
        recv_sizes = [0] * n
        for i in idx:
            s = slabs[i]
            for j in range(n):
                if j == me or s.span.whole:
                    continue
                part = intersect(s.span, needs[i][j], s.shape)
                if part is not None:
                    send[j].append(s.piece(part).reshape(-1))
                theirs = intersect(held_span(s.kind, s.shape, j, n, s.name), needs[i][me],
                                   s.shape)
                recv_sizes[j] += 0 if theirs is None else theirs.numel(s.shape)
        send_sizes = [sum(t.numel() for t in ts) for ts in send]
        recv = torch.empty(sum(recv_sizes), dtype=dtype, device=ctx.device)
        if any(send_sizes) or any(recv_sizes):
            flat = torch.cat([t for ts in send for t in ts]) if any(send_sizes) else \
                torch.empty(0, dtype=dtype, device=ctx.device)
            dist.all_to_all_single(recv, flat, output_split_sizes=recv_sizes,
                                   input_split_sizes=send_sizes, group=tp)
        ctx.received += recv.numel() * recv.element_size()
        inbox = list(recv.split(recv_sizes))
        cursor = [0] * n
        for i in idx:
            out[i] = _assemble(slabs[i], needs[i][me], inbox, cursor, me, n)
    return out


def _assemble(s: Slab, need: Span, inbox: list[torch.Tensor], cursor: list[int], me: int,
              n: int) -> Slab:
    """This rank's needed rows of `s`: its own piece plus each peer's, in peer order."""
    if s.span.whole:
        return s if need.whole else Slab(s.name, s.kind, s.member, s.shape, need, s.piece(need))
    dim = s.span.dim
    lo, hi = (0, s.shape[dim]) if need.whole else (need.start, need.stop)
    want = Span(dim, lo, hi)
    data = torch.empty([hi - lo if d == dim else x for d, x in enumerate(s.shape)],
                       dtype=s.data.dtype, device=s.data.device)
    for j in range(n):
        held = s.span if j == me else held_span(s.kind, s.shape, j, n, s.name)
        part = intersect(held, want, s.shape)
        if part is None:
            continue
        if j == me:
            piece = s.piece(part)
        else:
            size = part.numel(s.shape)
            shape = [part.stop - part.start if d == dim else x for d, x in enumerate(s.shape)]
            piece = inbox[j][cursor[j]:cursor[j] + size].view(shape)
            cursor[j] += size
        data.narrow(dim, part.start - lo, part.stop - part.start).copy_(piece)
    return Slab(s.name, s.kind, s.member, s.shape, want, data)


def _convert_unit(offset: int, params, ctx: _Ctx) -> list[Slab]:
    """The rows of one unit's HF tensors that this rank's stage's engine ranks load, on every TP
    rank of the stage."""
    with ctx.clock("convert"):
        slabs = _local_slabs(offset, params, ctx)
    with ctx.clock("gather"):
        return _fetch(slabs, ctx)


class _GroupChannel:
    """A registered process group with the broadcasts `_stream_unit` uses (a `link.Link` has the
    same two methods, for groups outside torch's world)."""

    def __init__(self, group):
        self.group, self.rank = group, group.rank()

    def broadcast_object(self, obj, src: int):
        box = [obj]
        dist.broadcast_object_list(box, src=dist.get_global_rank(self.group, src), group=self.group)
        return box[0]

    def broadcast(self, tensor: torch.Tensor, src: int) -> None:
        dist.broadcast(tensor, src=dist.get_global_rank(self.group, src), group=self.group)


def _stream_unit(channel, slabs: list[Slab] | None, src: int, ctx: _Ctx) -> list[Slab] | None:
    """One unit from member `src` of `channel` to the other members: its slabs' metadata, then
    their data (None = the sender has no more units). Counts what this rank received."""
    box = channel.broadcast_object(
        None if slabs is None else [(s.name, s.kind, s.member, s.shape, s.span,
                                     tuple(s.data.shape), s.data.dtype) for s in slabs], src)
    if box is None:
        return None
    mine = channel.rank == src
    out = []
    for i, (name, kind, member, shape, span, data_shape, dtype) in enumerate(box):
        t = slabs[i].data.contiguous() if mine else torch.empty(data_shape, dtype=dtype,
                                                               device=ctx.device)
        channel.broadcast(t, src)
        ctx.received += 0 if mine else nbytes(t)
        out.append(Slab(name, kind, member, shape, span, t))
    return out


def _broadcast_unit(slabs: list[Slab] | None, src_stage: int, ctx: _Ctx) -> list[Slab] | None:
    """One unit from pipeline stage `src_stage` to the others of this rank's PP group. The owner
    fetched the rows every stage of the group needs (`ctx.tp_slots` spans the PP group), so
    receivers use them as they come."""
    with ctx.clock("gather"):
        return _stream_unit(_GroupChannel(ctx.pg.pp), slabs, src_stage, ctx)


def _model_units(chunks, ctx: _Ctx) -> Iterator[list[Slab]]:
    """The whole model's units as slabs on this rank, stage by stage (collective over the rank's
    TP and PP groups)."""
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


def _materialize(s: Slab, ctx: _Ctx) -> tuple[str, torch.Tensor]:
    """A checkpoint-shaped tensor for the engine's loader: the slab's rows in place, every other
    row NaN (the loader reads only its own rows; a row it should not need would poison its
    output visibly instead of loading stale values)."""
    mine = engine_span(s.kind, s.member, s.shape, *ctx.slot, ctx.args["heads"], s.name)
    ctx.engine_bytes += mine.numel(s.shape) * s.data.element_size()
    if s.span.whole or (s.span.start == 0 and s.span.stop == s.shape[s.span.dim]):
        return s.name, s.data.reshape(s.shape)
    full = torch.full(s.shape, float("nan"), dtype=s.data.dtype, device=s.data.device)
    full.narrow(s.span.dim, s.span.start, s.span.stop - s.span.start).copy_(s.data)
    return s.name, full


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
def cast_dtype(engine_dtype: str) -> torch.dtype | None:
    """The dtype a sync casts to for an engine of `engine.dtype` (None for "auto": the learner's
    parameters' dtype)."""
    return None if engine_dtype == "auto" else getattr(torch, engine_dtype)


def engine_slot(global_rank: int, engine_tp: int) -> tuple[int, int]:
    """(rank within its engine, engine TP) of a rank in colocated placement: engines are
    `engine_tp` consecutive ranks (`rollout.placement`)."""
    return global_rank % engine_tp, engine_tp


@torch.no_grad()
def sync_weights(chunks, pg_collection, hf_config, engine, *,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                 dtype: torch.dtype | None = None, engine_tp: int | None = None) -> SyncStats:
    """Stream the model's weights into this rank's `engine` (a `RolloutEngine`).

    Collective: every rank of the world calls it with its own engine (colocated placement).
    `dtype` casts before anything moves (e.g. bf16 for a bf16 engine); None keeps the
    parameters' dtype. `engine_tp`: ranks per engine (default: the engine's
    `config.tensor_parallel_size`, else 1); each rank fetches only the rows its engine rank
    loads. Returns this rank's `SyncStats`.
    """
    from prco_mega.bridge.hf_io import mapping_args

    if engine is None:
        raise ValueError(f"rank {dist.get_rank()} has no engine: every rank of a colocated run "
                         "hosts one engine rank and receives the weights it loads")
    t0 = time.perf_counter()
    if engine_tp is None:
        engine_tp = getattr(getattr(engine, "config", None), "tensor_parallel_size", 1)
    pp = pg_collection.pp
    ctx = _Ctx(mapping_args(hf_config), pg_collection, dtype, device(),
               slot=engine_slot(dist.get_rank(), engine_tp))
    ctx.tp_slots = all_gather([engine_slot(dist.get_global_rank(pp, i), engine_tp)
                               for i in range(pp.size())], group=pg_collection.tp)
    with ctx.clock("check"):
        _refuse_nonfinite(chunks, ctx)
    return _push_units(engine, _model_units(chunks, ctx), ctx, bucket_bytes, t0)


def _push_units(engine, units: Iterator[list[Slab]], ctx: _Ctx, bucket_bytes: int,
                t0: float) -> SyncStats:
    """Lay each unit's slabs into checkpoint-shaped tensors, push them to `engine` in buckets of
    whole fused groups, reset its caches; this rank's `SyncStats` (the sync began at `t0`)."""
    assembler = GroupAssembler(engine.weight_groups())

    def groups() -> Iterator[FusedGroup]:
        for slabs in units:
            with ctx.clock("convert"):
                done = assembler.add_all(_materialize(s, ctx) for s in slabs)
            yield from done
        assembler.finish()

    tensors, total, count, largest = push_buckets(engine, groups(), bucket_bytes, ctx.clock)
    with ctx.clock("push"):
        engine.reset_caches()
    s = ctx.clock.seconds
    return SyncStats(tensors, total, count, largest, s["gather"], s["convert"], s["push"],
                     s["check"], time.perf_counter() - t0, ctx.received, ctx.engine_bytes)


# ----------------------------------------------------------------------------- separate placement
def _weight_senders(split, pg_collection) -> list[int]:
    """Global rank of each pipeline stage's sender (its data-parallel replica 0, TP rank 0), the
    same list on every rank of both worlds (collective over `split.link`)."""
    coords = (None if pg_collection is None else
              (pg_collection.pp.rank(), pg_collection.dp.rank(), pg_collection.tp.rank()))
    everyone = split.link.all_gather(coords)
    senders = {c[0]: r for r, c in enumerate(everyone) if c is not None and c[1:] == (0, 0)}
    return [senders[s] for s in range(len(senders))]


@torch.no_grad()
def send_weights(chunks, pg_collection, hf_config, split, *,
                 dtype: torch.dtype | None = None, engine_tp: int = 1) -> SyncStats:
    """Separate placement, learner side: every learner rank calls it, and each pipeline stage's
    sender streams the stage's HF tensors to the engine ranks: the rows engine TP rank e loads go
    over the link to the engine ranks of index e (`SplitWorld.weight_link`), so each engine rank
    receives its rows only. The other ranks of the sender's TP group send it their rows first.
    Data-parallel replicas > 0 only take part in the non-finite check. Pairs with
    `receive_weights` on the engine ranks."""
    from prco_mega.bridge.hf_io import mapping_args

    t0 = time.perf_counter()
    ctx = _Ctx(mapping_args(hf_config), pg_collection, dtype, device())
    with ctx.clock("check"):
        bad = None
        try:
            _refuse_nonfinite(chunks, ctx)
        except ValueError as exc:
            bad = str(exc)
        split.link.broadcast_object(bad, src=0)  # the engines refuse with the learner
        senders = _weight_senders(split, pg_collection)
    if bad is not None:
        raise ValueError(bad)
    pushed = 0
    if pg_collection.dp.rank() == 0:
        ctx.tp_slots = [[(0, 1)]] + [[]] * (pg_collection.tp.size() - 1)  # TP rank 0 sends
        stage = pg_collection.pp.rank()
        sending = split.global_rank == senders[stage]
        links = [split.weight_link(stage, senders[stage], e, engine_tp) for e in range(engine_tp)]
        for offset, params in _units(chunks):
            slabs = _convert_unit(offset, params, ctx)
            if not sending:
                continue
            for e, link in enumerate(links):
                rows = [_rows_for(s, e, engine_tp, ctx) for s in slabs]
                with ctx.clock("push"):
                    _stream_unit(link, rows, 0, ctx)
                pushed += sum(nbytes(s.data) for s in rows)
        if sending:
            for link in links:
                _stream_unit(link, None, 0, ctx)
    s = ctx.clock.seconds
    return SyncStats(0, pushed, 0, 0, s["gather"], s["convert"], s["push"], s["check"],
                     time.perf_counter() - t0, ctx.received)


def _rows_for(s: Slab, engine_rank: int, engine_tp: int, ctx: _Ctx) -> Slab:
    """The rows of a whole-tensor slab that rank `engine_rank` of an engine loads."""
    need = engine_span(s.kind, s.member, s.shape, engine_rank, engine_tp, ctx.args["heads"],
                       s.name)
    if need.whole:
        return s
    return Slab(s.name, s.kind, s.member, s.shape, need, s.piece(need).contiguous())


@torch.no_grad()
def receive_weights(engine, hf_config, split, *,
                    bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> SyncStats:
    """Separate placement, engine side: every engine rank receives each stage's HF tensors from
    its sender and pushes them into its engine in fused-group buckets, as `sync_weights` does.
    Raises the learner's ValueError when the learner refused non-finite weights."""
    from prco_mega.bridge.hf_io import mapping_args

    t0 = time.perf_counter()
    engine_tp = getattr(getattr(engine, "config", None), "tensor_parallel_size", 1)
    ctx = _Ctx(mapping_args(hf_config), None, None, device(),
               slot=engine_slot(dist.get_rank(), engine_tp))
    with ctx.clock("check"):
        bad = split.link.broadcast_object(None, src=0)
        senders = _weight_senders(split, None)
    if bad is not None:
        raise ValueError(bad)

    def units() -> Iterator[list[Slab]]:
        for stage, sender in enumerate(senders):
            link = split.weight_link(stage, sender, *ctx.slot)
            while True:
                with ctx.clock("gather"):
                    slabs = _stream_unit(link, None, 0, ctx)
                if slabs is None:
                    break
                yield slabs

    return _push_units(engine, units(), ctx, bucket_bytes, t0)
