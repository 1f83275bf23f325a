"""Weight sync, the Megatron side: a model as *units* of Hugging Face-named rows.

A unit is what moves together (a decoder layer, a vision block, or a lone parameter such as the
embedding). For each unit, this rank:
1. converts its own TP shard into the HF rows it holds, through the family's mapping table (QKV
   GQA unfused, gate/up split), optionally cast to the engine's dtype (`local_slabs`);
2. fetches, over the explicit TP group, the rows its stage's engine ranks load that other TP
   ranks hold: each rank sends each peer the intersection of its rows with what the peer needs,
   in one `all_to_all_single` per dtype (`fetch`). When the engine is split like the learner
   nothing moves; replicated tensors never move;
3. with PP > 1, the owning stage broadcasts the unit's rows to the other stages over the explicit
   PP group (each data-parallel replica over its own group) (`model_units`), or streams them over
   a separate-placement link (`stream_unit`).
Experts (mixture-of-experts layers) move in their own names (one tensor per expert, named by its
global index) over their own groups: their TP shards over the expert-TP group (`fetch`, the rows
the ranks of the rank's expert-parallel group need), then every expert-parallel rank sends each
peer the rows of its experts that the peer's engine rank loads (`exchange_experts`): without
engine expert parallel every engine rank loads its rows of every expert; with it
(`SyncContext.engine_experts`) only its own experts, whole (`slices.expert_span`). The router is
replicated and moves as any replicated tensor.
`materialize` lays a slab into a checkpoint-shaped tensor whose rows the engine rank does not load
are NaN, so a wrong row rule poisons the output instead of loading stale values. The row rules
follow vLLM's loaders (`bridge.slices`). Non-finite weights are refused before anything reaches an
engine (`refuse_nonfinite`). The publishers (`bridge.colocated`, `bridge.remote`) drive these.
"""
from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from prco_mega.bridge.hf_io import layer_offset, local_experts, megatron_params, unwrap
from prco_mega.bridge.mapping import (expert_rows, family_table, is_expert, megatron_shards_to_hf,
                                      parse_expert_name, resolve)
from prco_mega.bridge.slices import (Span, engine_span, expert_span, full_shape_of, held_span, hull,
                                     intersect, kind_of, local_heads)
from prco_mega.dist.world import all_gather
from prco_mega.tracking.timing import PhaseTimer

PHASES = ("gather", "convert", "push", "check")

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
    sent_per_engine_rank: tuple[int, ...] = ()
    """Separate placement, a stage's sender: bytes sent to each engine rank of TP index e."""

    @property
    def bytes_per_second(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else float("inf")


# ----------------------------------------------------------------------------- units
def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


_UNIT = re.compile(r"^(language_model\.decoder\.layers\.\d+\.|vision\.model\.blocks\.\d+\.)")


def unit_key(megatron_name: str) -> str:
    """Parameters moved together: one decoder layer, one vision block, else the parameter."""
    m = _UNIT.match(megatron_name)
    return m.group(1) if m else megatron_name


@dataclass
class SyncContext:
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
    clock: PhaseTimer = field(default_factory=lambda: PhaseTimer(*PHASES))
    received: int = 0
    """Bytes received from other ranks so far."""
    engine_bytes: int = 0
    """Bytes of the rows this rank's engine loads, so far."""
    ep_slots: list = field(default_factory=list)
    """Per expert-parallel peer (EP rank order): the slots whose rows it needs (its entry of
    `tp_slots`)."""
    etp_slots: list = field(default_factory=list)
    """Per expert-TP peer: the slots of every rank of its expert-parallel group."""
    engine_experts: int = 0
    """Routed experts per MoE layer when the engines have expert parallel (each engine rank loads
    its own experts whole, `slices.expert_span`); 0: they have none."""


def set_expert_slots(ctx: SyncContext) -> None:
    """Fill `ctx.ep_slots` and `ctx.etp_slots` from `ctx.tp_slots` (collective over the
    expert-parallel and expert-TP groups; nothing for a model without experts)."""
    if not expert_rows(ctx.args["model_type"]):
        return
    mine = ctx.tp_slots[ctx.pg.tp.rank()]
    ctx.ep_slots = all_gather(mine, group=ctx.pg.ep)
    ctx.etp_slots = all_gather([slot for peer in ctx.ep_slots for slot in peer],
                               group=ctx.pg.expt_tp)


def units_of(chunks) -> Iterator[tuple[tuple[int, int, int], list[tuple[str, torch.Tensor]]]]:
    """((layer offset, first local expert, experts per rank), [(Megatron name, parameter)]) per
    unit of this rank's chunks, in order."""
    for chunk in chunks:
        where = (layer_offset(unwrap(chunk)), *local_experts(unwrap(chunk)))
        for _, params in itertools.groupby(megatron_params(chunk), key=lambda np: unit_key(np[0])):
            yield where, list(params)


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


def local_slabs(offset: int, params, ctx: SyncContext, tp=None,
                expert_offset: int = 0) -> list[Slab]:
    """This rank's part of the HF tensors of one unit, in HF layout (no communication). `tp`:
    the group the parameters are split over (default the TP group; experts: expert-TP)."""
    tp = tp or ctx.pg.tp
    args = ctx.args
    heads = args["heads"] if tp.size() == 1 else local_heads(args["heads"], tp.size())
    out = []
    for name, param in params:
        kind = kind_of(name, args["model_type"])
        hf = megatron_shards_to_hf(name, [param.detach()], model_type=args["model_type"],
                                   layer_offset=offset, heads=heads, tied=args["tied"],
                                   expert_offset=expert_offset)
        for member, (hf_name, t) in enumerate(hf.items()):
            shape = full_shape_of(kind, tuple(t.shape), tp.size())
            span = held_span(kind, shape, tp.rank(), tp.size(), hf_name)
            out.append(Slab(hf_name, kind, member, shape, span,
                            t if ctx.dtype is None else t.to(ctx.dtype)))
    return out


def engine_rows(slab: Slab, engine_rank: int, engine_tp: int, ctx: SyncContext) -> Span:
    """Rows of `slab`'s tensor that rank `engine_rank` of an engine of `engine_tp` ranks loads."""
    expert = parse_expert_name(slab.name, ctx.args["model_type"]) if ctx.engine_experts else None
    if expert is not None:
        return expert_span(expert.expert, ctx.engine_experts, engine_rank, engine_tp)
    return engine_span(slab.kind, slab.member, slab.shape, engine_rank, engine_tp,
                       ctx.args["heads"], slab.name)


def need_of(slab: Slab, slots: list[tuple[int, int]], ctx: SyncContext) -> Span:
    """Rows of `slab`'s tensor that the engine ranks `slots` [(engine rank, engine TP)] load."""
    return hull([engine_rows(slab, r, t, ctx) for r, t in slots])


def fetch(slabs: list[Slab], ctx: SyncContext, tp=None, slots=None) -> list[Slab]:
    """Each rank of the TP group ends with the rows its stage's engine ranks load (`ctx.tp_slots`):
    every rank sends each peer the intersection of what it holds with what the peer needs, in one
    `all_to_all_single` per dtype. Nothing moves for rows a rank already holds (matching TP sizes,
    replicated tensors), so an engine split like the learner receives no TP traffic. `tp`,
    `slots`: another group and its peers' slots (experts: expert-TP, `ctx.etp_slots`)."""
    tp, slots = tp or ctx.pg.tp, ctx.tp_slots if slots is None else slots
    me, n = tp.rank(), tp.size()
    needs = [[need_of(s, slots[j], ctx) for j in range(n)] for s in slabs]
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


def exchange_experts(slabs: list[Slab], peer_names: list[list[str]],
                     ctx: SyncContext) -> list[Slab]:
    """Every expert of a layer, the rows this rank's stage's engine ranks load: each
    expert-parallel rank sends each peer, in one `all_to_all_single` per dtype, the rows of its
    own experts (`slabs`, already holding what every peer needs) that the peer needs.
    `peer_names[j][i]`: the name of peer j's counterpart of `slabs[i]` (the same local expert,
    its global index), so receivers know what they get without asking (and, under engine expert
    parallel, whether they need it at all)."""
    ep = ctx.pg.ep
    me, n = ep.rank(), ep.size()
    needs = [[need_of(s, ctx.ep_slots[j], ctx) for j in range(n)] for s in slabs]
    theirs = [[need_of(dataclasses.replace(s, name=peer_names[j][i]), ctx.ep_slots[me], ctx)
               for i, s in enumerate(slabs)] for j in range(n)]
    out = [_narrow(s, needs[i][me]) for i, s in enumerate(slabs)]
    for dtype in dict.fromkeys(s.data.dtype for s in slabs):
        idx = [i for i, s in enumerate(slabs) if s.data.dtype == dtype]
        send = [[] if j == me else [_narrow(slabs[i], needs[i][j]).data.reshape(-1) for i in idx]
                for j in range(n)]
        recv_sizes = [0 if j == me else sum(_rows(slabs[i], theirs[j][i]) for i in idx)
                      for j in range(n)]
        send_sizes = [sum(t.numel() for t in ts) for ts in send]
        recv = torch.empty(sum(recv_sizes), dtype=dtype, device=ctx.device)
        flat = torch.cat([t for ts in send for t in ts]) if any(send_sizes) else \
            torch.empty(0, dtype=dtype, device=ctx.device)
        dist.all_to_all_single(recv, flat, output_split_sizes=recv_sizes,
                               input_split_sizes=send_sizes, group=ep)
        ctx.received += nbytes(recv)
        for j, box in enumerate(recv.split(recv_sizes)):
            if j == me:
                continue
            cursor = 0
            for i in idx:
                s, need = slabs[i], theirs[j][i]
                size = _rows(s, need)
                shape = s.shape if need.whole else [need.stop - need.start if d == need.dim
                                                    else x for d, x in enumerate(s.shape)]
                out.append(Slab(peer_names[j][i], s.kind, s.member, s.shape, need,
                                box[cursor:cursor + size].view(shape)))
                cursor += size
    return out


def _rows(s: Slab, need: Span) -> int:
    """Elements of `s`'s full tensor inside `need`."""
    return need.numel(s.shape) if not need.whole else torch.Size(s.shape).numel()


def _narrow(s: Slab, need: Span) -> Slab:
    """The rows `need` of `s` (which holds them)."""
    if need.whole:
        return s
    return Slab(s.name, s.kind, s.member, s.shape, need, s.piece(need).contiguous())


def _expert_slabs(offset: int, first: int, per_rank: int, params,
                  ctx: SyncContext) -> list[Slab]:
    """A unit's experts, all of them, the rows this rank's stage's engine ranks load."""
    with ctx.clock("convert"):
        slabs = local_slabs(offset, params, ctx, tp=ctx.pg.expt_tp, expert_offset=first)
        table = family_table(ctx.args["model_type"])
        peer_names = [[hf for name, _ in params
                       for hf in resolve(name, table, offset, j * per_rank)[1]]
                      for j in range(ctx.pg.ep.size())]
    with ctx.clock("gather"):
        slabs = fetch(slabs, ctx, tp=ctx.pg.expt_tp, slots=ctx.etp_slots)
        return exchange_experts(slabs, peer_names, ctx) if ctx.pg.ep.size() > 1 else slabs


def convert_unit(where: tuple[int, int, int], params, ctx: SyncContext) -> list[Slab]:
    """The rows of one unit's HF tensors that this rank's stage's engine ranks load, on every TP
    rank of the stage. `where`: (layer offset, first local expert, experts per rank)."""
    offset, first, per_rank = where
    experts = [(n, p) for n, p in params if is_expert(n, ctx.args["model_type"])]
    if experts:
        params = [(n, p) for n, p in params if not is_expert(n, ctx.args["model_type"])]
    with ctx.clock("convert"):
        slabs = local_slabs(offset, params, ctx)
    with ctx.clock("gather"):
        slabs = fetch(slabs, ctx)
    return slabs + (_expert_slabs(offset, first, per_rank, experts, ctx) if experts else [])


class _GroupChannel:
    """A registered process group with the broadcasts `stream_unit` uses (a `link.Link` has the
    same two methods, for groups outside torch's world)."""

    def __init__(self, group):
        self.group, self.rank = group, group.rank()

    def broadcast_object(self, obj, src: int):
        box = [obj]
        dist.broadcast_object_list(box, src=dist.get_global_rank(self.group, src), group=self.group)
        return box[0]

    def broadcast(self, tensor: torch.Tensor, src: int) -> None:
        dist.broadcast(tensor, src=dist.get_global_rank(self.group, src), group=self.group)


def stream_unit(channel, slabs: list[Slab] | None, src: int, ctx: SyncContext) -> list[Slab] | None:
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


def _broadcast_unit(slabs: list[Slab] | None, src_stage: int, ctx: SyncContext) -> list[Slab] | None:
    """One unit from pipeline stage `src_stage` to the others of this rank's PP group. The owner
    fetched the rows every stage of the group needs (`ctx.tp_slots` spans the PP group), so
    receivers use them as they come."""
    with ctx.clock("gather"):
        return stream_unit(_GroupChannel(ctx.pg.pp), slabs, src_stage, ctx)


def model_units(chunks, ctx: SyncContext) -> Iterator[list[Slab]]:
    """The whole model's units as slabs on this rank, stage by stage (collective over the rank's
    TP and PP groups)."""
    pp = ctx.pg.pp
    if pp.size() == 1:
        for where, params in units_of(chunks):
            yield convert_unit(where, params, ctx)
        return
    for stage in range(pp.size()):
        if pp.rank() == stage:
            for where, params in units_of(chunks):
                yield _broadcast_unit(convert_unit(where, params, ctx), stage, ctx)
            _broadcast_unit(None, stage, ctx)
        else:
            while (named := _broadcast_unit(None, stage, ctx)) is not None:
                yield named


def materialize(s: Slab, ctx: SyncContext) -> tuple[str, torch.Tensor]:
    """A checkpoint-shaped tensor for the engine's loader: the slab's rows in place, every other
    row NaN (the loader reads only its own rows; a row it should not need would poison its
    output visibly instead of loading stale values)."""
    mine = engine_rows(s, *ctx.slot, ctx)
    ctx.engine_bytes += mine.numel(s.shape) * s.data.element_size()
    if s.span.whole or (s.span.start == 0 and s.span.stop == s.shape[s.span.dim]):
        return s.name, s.data.reshape(s.shape)
    full = torch.full(s.shape, float("nan"), dtype=s.data.dtype, device=s.data.device)
    full.narrow(s.span.dim, s.span.start, s.span.stop - s.span.start).copy_(s.data)
    return s.name, full


# ----------------------------------------------------------------------------- checks
def _first_nonfinite(chunks, ctx: SyncContext) -> str | None:
    """This rank's first parameter that is non-finite (after the cast), with its HF names."""
    for chunk in chunks:
        for name, p in megatron_params(chunk):
            value = p.detach() if ctx.dtype is None else p.detach().to(ctx.dtype)
            if not bool(torch.isfinite(value).all()):
                _, hf = resolve(name, family_table(ctx.args["model_type"]),
                                layer_offset(unwrap(chunk)), local_experts(unwrap(chunk))[0])
                return f"Megatron parameter {name} (HF {hf})"
    return None


def refuse_nonfinite(chunks, ctx: SyncContext) -> None:
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
