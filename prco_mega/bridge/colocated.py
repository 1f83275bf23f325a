"""Weight sync in colocated placement: every rank of the world hosts one rank of a rollout engine
(`rollout.placement`) and streams into it the rows its engine rank loads.

vLLM's weight loader takes checkpoint-shaped tensors and narrows them to its own TP rank's rows,
so every rank calls `sync_weights(chunks, pg_collection, hf_config, engine)` with its own engine
and fetches only those rows (`bridge.units`), one unit at a time, stage by stage, then pushes
them in buckets of whole fused groups (`bridge.buckets`).

What crosses the network per rank: the rows its engine loads that the rank does not hold (other TP
shards, other stages' units, other expert-parallel ranks' experts), never more than its engine loads (`SyncStats.engine_bytes`), except
that a pipeline group whose stages feed different engine ranks shares one hull of rows. Peak extra
memory is about one unit plus one bucket. An engine with expert parallel
(`engine.enable_expert_parallel`) loads only its own experts, whole: each rank receives those
(when the learner's expert placement matches the engine's, none) and pushes nothing of the others.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from prco_mega.bridge.buckets import push_units
from prco_mega.bridge.hf_io import mapping_args
from prco_mega.bridge.mapping import parse_expert_name
from prco_mega.bridge.slices import engine_experts
from prco_mega.bridge.units import (DEFAULT_BUCKET_BYTES, Slab, SyncContext, SyncStats, cast_dtype,
                                    engine_slot, model_units, refuse_nonfinite,
                                    set_expert_slots)
from prco_mega.dist.world import all_gather, device

if TYPE_CHECKING:
    from prco_mega.rollout.config import EngineConfig
    from prco_mega.rollout.engine import RolloutEngine


@torch.no_grad()
def sync_weights(chunks, pg_collection, hf_config, engine, *,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                 dtype: torch.dtype | None = None, engine_tp: int | None = None) -> SyncStats:
    """Stream the model's weights into this rank's `engine` (a `RolloutEngine`).

    Collective: every rank of the world calls it with its own engine (colocated placement).
    `dtype` casts before anything moves (e.g. bf16 for a bf16 engine); None keeps the
    parameters' dtype. `engine_tp`: ranks per engine (default: the engine's
    `config.tensor_parallel_size`, else 1); each rank fetches only the rows its engine rank
    loads (with the engine's `config.enable_expert_parallel`, only its own experts, whole).
    Returns this rank's `SyncStats`.
    """
    if engine is None:
        raise ValueError(f"rank {dist.get_rank()} has no engine: every rank of a colocated run "
                         "hosts one engine rank and receives the weights it loads")
    t0 = time.perf_counter()
    if engine_tp is None:
        engine_tp = getattr(getattr(engine, "config", None), "tensor_parallel_size", 1)
    pp = pg_collection.pp
    expert_parallel = getattr(getattr(engine, "config", None), "enable_expert_parallel", False)
    ctx = SyncContext(mapping_args(hf_config), pg_collection, dtype, device(),
                      slot=engine_slot(dist.get_rank(), engine_tp),
                      engine_experts=engine.num_experts if expert_parallel else 0)
    ctx.tp_slots = all_gather([engine_slot(dist.get_global_rank(pp, i), engine_tp)
                               for i in range(pp.size())], group=pg_collection.tp)
    set_expert_slots(ctx)
    with ctx.clock("check"):
        refuse_nonfinite(chunks, ctx)
    units = model_units(chunks, ctx)
    if ctx.engine_experts:
        units = (own_experts_only(slabs, ctx) for slabs in units)
    return push_units(engine, units, ctx, bucket_bytes, t0)


def own_experts_only(slabs: list[Slab], ctx: SyncContext) -> list[Slab]:
    """`slabs` less the experts this rank's engine rank does not hold (engine expert parallel:
    a unit carries every expert of a layer, those of other ranks with no rows, or with the rows a
    pipeline peer's engine rank loads)."""
    mine = engine_experts(ctx.engine_experts, *ctx.slot)
    return [s for s in slabs
            if (e := parse_expert_name(s.name, ctx.args["model_type"])) is None
            or e.expert in mine]


def sync_metrics(stats: SyncStats, received: list[int]) -> dict[str, float]:
    """The step's sync metrics: what this rank pushed, and what every rank received from other
    ranks (`received`, one entry per rank of the run, engines included)."""
    return {"sync/bytes": stats.bytes, "sync/seconds": stats.seconds,
            "sync/received_bytes_max": float(max(received)),
            "sync/received_bytes_mean": sum(received) / len(received)}


class ColocatedPublisher:
    """Publishes the learner's weights to the engine on this rank (collective over the world).
    The engine wakes its weights first and its KV cache after the push (vLLM's order)."""

    def __init__(self, engine: RolloutEngine, config: EngineConfig):
        self.engine, self.config = engine, config

    def publish(self, policy: Any) -> dict[str, float]:
        self.engine.wake_up(["weights"])
        stats = sync_weights(policy.chunks, policy.pg, policy.hf_config, self.engine,
                             bucket_bytes=self.config.sync_bucket_mib * 2**20,
                             dtype=cast_dtype(self.config.dtype))
        self.engine.wake_up(["kv_cache"])
        return sync_metrics(stats, all_gather(stats.received_bytes))
