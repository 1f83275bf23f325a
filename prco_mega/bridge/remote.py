"""Weight sync in separate placement: the learner's ranks stream weights over links to the engine
ranks, which live in a torch world of their own (`dist.link`).

Each pipeline stage's sender (data-parallel replica 0, TP rank 0) converts its stage unit by unit
(its TP peers send it their rows first, `bridge.units`) and streams, for each engine TP rank e,
the rows that rank loads over the link to the engine ranks of index e, so each engine rank
receives only its rows. The engine ranks push what they receive in buckets of whole fused groups
(`bridge.buckets`), as colocated placement does. A learner that finds non-finite weights refuses
on both sides before anything moves.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from prco_mega.bridge.buckets import push_units
from prco_mega.bridge.colocated import sync_metrics
from prco_mega.bridge.hf_io import mapping_args
from prco_mega.bridge.mapping import expert_rows
from prco_mega.bridge.units import (DEFAULT_BUCKET_BYTES, Slab, SyncContext, SyncStats, cast_dtype,
                                    convert_unit, engine_rows, engine_slot, nbytes,
                                    refuse_nonfinite, set_expert_slots, stream_unit, units_of)
from prco_mega.dist.world import all_gather, device

if TYPE_CHECKING:
    from prco_mega.dist.link import SplitWorld
    from prco_mega.rollout.config import EngineConfig
    from prco_mega.rollout.engine import RolloutEngine


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
                 dtype: torch.dtype | None = None, engine_tp: int = 1,
                 engine_experts: int = 0) -> SyncStats:
    """Separate placement, learner side: every learner rank calls it, and each pipeline stage's
    sender streams the stage's HF tensors to the engine ranks: the rows engine TP rank e loads go
    over the link to the engine ranks of index e (`SplitWorld.weight_link`), so each engine rank
    receives its rows only. The other ranks of the sender's TP group send it their rows first.
    Data-parallel replicas > 0 only take part in the non-finite check. Pairs with
    `receive_weights` on the engine ranks. `engine_experts`: the model's expert count when the
    engines run expert parallel (each engine rank then gets only its experts, whole), else 0."""
    t0 = time.perf_counter()
    ctx = SyncContext(mapping_args(hf_config), pg_collection, dtype, device(),
                      engine_experts=engine_experts)
    with ctx.clock("check"):
        bad = None
        try:
            refuse_nonfinite(chunks, ctx)
        except ValueError as exc:
            bad = str(exc)
        split.link.broadcast_object(bad, src=0)  # the engines refuse with the learner
        senders = _weight_senders(split, pg_collection)
    if bad is not None:
        raise ValueError(bad)
    per_index = [0] * engine_tp  # bytes sent to each engine rank of index e
    experts = bool(expert_rows(ctx.args["model_type"]))
    expert_parallel = experts and pg_collection.ep.size() > 1
    replica0 = pg_collection.dp.rank() == 0
    # Who converts: the sender's data-parallel replica (its TP peers send it their rows). With
    # expert parallel a stage's experts are spread over its EP group, which spans data-parallel
    # replicas, so every rank of the stage takes part: the EP group holding the sender sends it
    # the experts it lacks (`units.exchange_experts`), and the other replicas' groups run the same
    # collectives with nothing to send (each TP or EP group only ever meets whole).
    if replica0 or expert_parallel:
        ctx.tp_slots = ([[(0, 1)]] if replica0 else [[]]) + [[]] * (pg_collection.tp.size() - 1)
        if expert_parallel:
            set_expert_slots(ctx)
        elif experts:
            ctx.etp_slots = [[(0, 1)]] + [[]] * (pg_collection.expt_tp.size() - 1)
        stage = pg_collection.pp.rank()
        sending = split.global_rank == senders[stage]
        links = ([split.weight_link(stage, senders[stage], e, engine_tp)
                  for e in range(engine_tp)] if replica0 else [])
        for where, params in units_of(chunks):
            slabs = convert_unit(where, params, ctx)
            if not sending:
                continue
            for e, link in enumerate(links):
                rows = [r for s in slabs if (r := _rows_for(s, e, engine_tp, ctx)) is not None]
                with ctx.clock("push"):
                    stream_unit(link, rows, 0, ctx)
                per_index[e] += sum(nbytes(s.data) for s in rows)
        if sending:
            for link in links:
                stream_unit(link, None, 0, ctx)
    s = ctx.clock.seconds
    return SyncStats(0, sum(per_index), 0, 0, s["gather"], s["convert"], s["push"], s["check"],
                     time.perf_counter() - t0, ctx.received, sent_per_engine_rank=tuple(per_index))


def _rows_for(s: Slab, engine_rank: int, engine_tp: int, ctx: SyncContext) -> Slab | None:
    """The rows of a whole-tensor slab that rank `engine_rank` of an engine loads (None: none,
    an expert another rank of an expert-parallel engine holds)."""
    need = engine_rows(s, engine_rank, engine_tp, ctx)
    if need.whole:
        return s
    if need.start >= need.stop:
        return None
    return Slab(s.name, s.kind, s.member, s.shape, need, s.piece(need).contiguous())


@torch.no_grad()
def receive_weights(engine, hf_config, split, *,
                    bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> SyncStats:
    """Separate placement, engine side: every engine rank receives each stage's HF tensors from
    its sender and pushes them into its engine in fused-group buckets, as `sync_weights` does.
    Raises the learner's ValueError when the learner refused non-finite weights."""
    t0 = time.perf_counter()
    config = getattr(engine, "config", None)
    engine_tp = getattr(config, "tensor_parallel_size", 1)
    expert_parallel = getattr(config, "enable_expert_parallel", False)
    ctx = SyncContext(mapping_args(hf_config), None, None, device(),
                      slot=engine_slot(dist.get_rank(), engine_tp),
                      engine_experts=engine.num_experts if expert_parallel else 0)
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
                    slabs = stream_unit(link, None, 0, ctx)
                if slabs is None:
                    break
                yield slabs

    return push_units(engine, units(), ctx, bucket_bytes, t0)


def received_per_rank(split: SplitWorld, learner: list[tuple[int, tuple[int, ...]]], engine_tp: int
                      ) -> list[int]:
    """Bytes every rank of both worlds received in one sync: each learner rank's own count
    (`learner`: the learner ranks' (received, sent_per_engine_rank), rank order), and for each
    engine rank what the stage senders sent to its engine TP index."""
    per_index = [sum(sent[e] for _, sent in learner if sent) for e in range(engine_tp)]
    return ([received for received, _ in learner]
            + [per_index[(g - split.learner_size) % engine_tp] for g in split.engine_ranks])


class RemotePublisher:
    """Publishes the learner's weights to the engine ranks of a split world (every learner rank
    calls `publish`; the engine ranks run `WeightReceiver.receive` at the same point)."""

    def __init__(self, split: SplitWorld, config: EngineConfig):
        self.split, self.config = split, config
        self.published = 0

    def publish(self, policy: Any) -> dict[str, float]:
        tp = self.config.tensor_parallel_size
        # engines that generate in chunks look for this key between chunks (`WeightReceiver.ready`)
        self.split.store.set(weights_key(self.published), "1")
        self.published += 1
        experts = (policy.hf_config.text_config.num_experts
                   if self.config.enable_expert_parallel else 0)
        stats = send_weights(policy.chunks, policy.pg, policy.hf_config, self.split,
                             dtype=cast_dtype(self.config.dtype), engine_tp=tp,
                             engine_experts=experts)
        learner = all_gather((stats.received_bytes, stats.sent_per_engine_rank))
        return sync_metrics(stats, received_per_rank(self.split, learner, tp))


class WeightReceiver:
    """The engine ranks' side of `RemotePublisher.publish`."""

    def __init__(self, engine: RolloutEngine, hf_config: Any, split: SplitWorld,
                 config: EngineConfig):
        self.engine, self.hf_config, self.split = engine, hf_config, split
        self.bucket_bytes = config.sync_bucket_mib * 2**20
        self.received = 0

    def ready(self) -> bool:
        """Whether the learner has begun its next publish (so `receive` would not wait for the
        learner's update): a look at the launcher's store, no collective."""
        return self.split.store.check([weights_key(self.received)])

    def receive(self) -> SyncStats:
        stats = receive_weights(self.engine, self.hf_config, self.split,
                                bucket_bytes=self.bucket_bytes)
        self.received += 1
        return stats


def weights_key(n: int) -> str:
    """The store key the learner sets as it begins its n-th publish of the run (from 0)."""
    return f"prco/weights/{n}"
