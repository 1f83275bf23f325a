"""Weight sync, the engine side: fused groups and buckets.

A push must never split a fused engine layer (vLLM finalises a layer when its tensors arrive: q,
k, v weights and biases together; gate and up together), so HF tensors are assembled into *fused
groups* (every checkpoint tensor of one engine layer), groups into buckets of at most
`bucket_bytes` (a larger group goes alone), and each bucket goes to `engine.update_weights`. A
bucket is a list of whole groups and a group is released only when complete. After the last
bucket the engine's prefix and encoder caches are reset.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from prco_mega.bridge.units import Slab, SyncContext, SyncStats, materialize, nbytes
from prco_mega.tracking.timing import PhaseTimer



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


def push_units(engine, units: Iterator[list[Slab]], ctx: SyncContext, bucket_bytes: int,
                t0: float) -> SyncStats:
    """Lay each unit's slabs into checkpoint-shaped tensors, push them to `engine` in buckets of
    whole fused groups, reset its caches; this rank's `SyncStats` (the sync began at `t0`)."""
    assembler = GroupAssembler(engine.weight_groups())

    def groups() -> Iterator[FusedGroup]:
        for slabs in units:
            with ctx.clock("convert"):
                done = assembler.add_all(materialize(s, ctx) for s in slabs)
            yield from done
        assembler.finish()

    tensors, total, count, largest = push_buckets(engine, groups(), bucket_bytes, ctx.clock)
    with ctx.clock("push"):
        engine.reset_caches()
    s = ctx.clock.seconds
    return SyncStats(tensors, total, count, largest, s["gather"], s["convert"], s["push"],
                     s["check"], time.perf_counter() - t0, ctx.received, ctx.engine_bytes)
