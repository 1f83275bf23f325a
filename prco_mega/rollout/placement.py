"""Where the rollout engines live in a torchrun world, and which tasks each one samples.

The world is split into engine groups of `engine.tensor_parallel_size` consecutive ranks, the
layout vLLM's `external_launcher` backend gives (its groups are ordered TP fastest, like
Megatron's): with 8 ranks and engine TP 2 the engines are ranks [0,1], [2,3], [4,5], [6,7]. Every
rank hosts one engine rank (colocated placement); a world of one is one engine of one rank.

A step's tasks are dealt to engines in contiguous, balanced blocks by their index in the step, so
every sample keeps its global identity (task index, caption index, sample index) whichever engine
draws it: the sampling seeds and the Solver-group draw are keyed by that identity, never by the
engine, and a 1-engine and an N-engine run draw the same trajectories.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EnginePlacement:
    """This rank's place among the rollout engines."""

    world_size: int
    rank: int
    engine_tp: int
    """Ranks per engine (`engine.tensor_parallel_size`)."""

    @property
    def num_engines(self) -> int:
        return self.world_size // self.engine_tp

    @property
    def engine_index(self) -> int:
        """The engine this rank belongs to."""
        return self.rank // self.engine_tp

    @property
    def engine_ranks(self) -> list[int]:
        """Global ranks of this rank's engine, its leader first."""
        first = self.engine_index * self.engine_tp
        return list(range(first, first + self.engine_tp))

    @property
    def is_engine_leader(self) -> bool:
        """The engine's first rank: the one that scores its samples and reports them (the other
        ranks of a TP engine draw the very same samples)."""
        return self.rank == self.engine_ranks[0]


def engine_placement(world_size: int, rank: int, engine_tp: int) -> EnginePlacement:
    """Colocated placement: every rank hosts one engine rank. ValueError when the engine's
    tensor parallelism does not divide the world."""
    if engine_tp < 1 or world_size % engine_tp:
        raise ValueError(f"engine.tensor_parallel_size ({engine_tp}) must divide the world size "
                         f"({world_size}): every rank hosts one rank of one engine")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    return EnginePlacement(world_size, rank, engine_tp)


def deal(n_items: int, n_engines: int) -> list[range]:
    """Contiguous balanced blocks: engine e gets items [e n / E, (e + 1) n / E) (sizes differ by
    at most one; deterministic, so every rank and a resumed run deal alike)."""
    if n_engines < 1:
        raise ValueError(f"need at least one engine, got {n_engines}")
    return [range(e * n_items // n_engines, (e + 1) * n_items // n_engines)
            for e in range(n_engines)]


@dataclass(frozen=True)
class Shard:
    """What a sampler needs of the placement: its engine's block of a step's tasks, and the
    engines' results gathered (one entry per engine, engine order; a world of one is one engine).
    """

    placement: EnginePlacement

    def block(self, n_tasks: int) -> range:
        return deal(n_tasks, self.placement.num_engines)[self.placement.engine_index]

    def gather(self, obj: object) -> list:
        """`obj` of every engine's leader (the other ranks of a TP engine hold the same), in
        engine order; collective over the world."""
        from prco_mega.dist.world import all_gather

        p = self.placement
        got = all_gather(obj if p.is_engine_leader else None)
        return [got[e * p.engine_tp] for e in range(p.num_engines)]


def single_engine() -> Shard:
    """A world of one: one engine that samples every task."""
    return Shard(EnginePlacement(world_size=1, rank=0, engine_tp=1))
