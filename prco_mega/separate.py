"""Separate placement: the engines sample on their own ranks while the learner trains on its own.

The torchrun world is split at start (`link.split_world`): learner ranks [0, L), engine ranks
[L, W). Per RL step k the two sides meet twice over the links, always in this order on both:

- X(k), `deliver` / `collect`: the engine leaders' parts of step k go to the learner's
  data-parallel replicas. Shapes (a few numbers per trajectory) and the engines' metrics are
  all-gathered over the link; the learner plans the step (its own planner, the one colocated
  runs use) and its first rank broadcasts which replica trains each trajectory; then every
  trajectory, with its images, crosses once, from its engine leader to that replica's ranks.
- W(k+1), `bridge.sync.send_weights` / `receive_weights`: after the learner's update, each
  pipeline stage streams its weights to every engine rank.

`rollout.off_policy_steps` says where the engines sample relative to W:
- 0 (on-policy): W(k), sample k, X(k): the engines wait while the learner trains;
- 1: sample k, W(k), X(k): the engines sample step k with the weights of update k-1 while the
  learner trains update k-1, then take update k's weights (W(k)) and hand step k over. Every
  trajectory records the policy version that drew it (`policy_version`, the number of updates in
  its weights), so the loss knows its lag (`train/policy_lag`) and TIS can correct it.
The order of link operations is the same in both modes (X0, W1, X1, W2, ...), so the two sides
never wait on each other except for data.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

from prco_mega.learner.policy import part_shapes, step_order
from prco_mega.link import SplitWorld
from prco_mega.types import Trajectory


@dataclass(frozen=True)
class EngineReport:
    """What an engine leader tells the learner about its part of a step."""

    metrics: dict[str, float]
    weight: float
    """The weight of its metrics when the engines' are combined (`scoring.combine_metrics`)."""
    trajectories: int
    policy_version: int
    """Updates in the weights that drew this part."""
    stream_state: dict | None
    """The task stream's position after the step (every engine walks the same stream): the
    learner saves it with its checkpoint."""


def sampling_version(step: int, off_policy_steps: int) -> int:
    """Updates in the engines' weights when they sample step `step`."""
    if off_policy_steps not in (0, 1):
        raise ValueError(f"rollout.off_policy_steps must be 0 or 1, got {off_policy_steps}")
    return max(0, step - off_policy_steps)


def stamp(part: Sequence[Trajectory], version: int) -> list[Trajectory]:
    """The part with the policy version that drew it."""
    return [dataclasses.replace(t, policy_version=version) for t in part]


def deliver(split: SplitWorld, part: Sequence[Trajectory], report: EngineReport | None,
            learner_dp: list[int | None]) -> None:
    """Engine side of X(k): every engine rank calls it; `part` is its leader's share ([] and
    None on the other ranks of a TP engine). `learner_dp`: `learner_dp_ranks(split, ...)`."""
    gathered = split.link.all_gather((part_shapes(part), report))
    step_id, _ = step_order([shapes for shapes, _ in gathered])
    owner = split.link.broadcast_object(None, src=0)
    if owner is None:  # no engine had a trajectory: nothing to train this step
        split.link.exchange([{} for _ in range(split.link.size)])
        return
    outbox: list[dict[int, Trajectory]] = [{} for _ in range(split.link.size)]
    for j, traj in enumerate(part):
        i = step_id[split.global_rank, j]
        for rank, dp in enumerate(learner_dp):
            if dp is not None and owner[i] == dp:
                outbox[rank][i] = traj
    split.link.exchange(outbox)


def collect(split: SplitWorld, policy: Any) -> tuple[dict[int, Trajectory], Any,
                                                     list[EngineReport]]:
    """Learner side of X(k): (this replica's trajectories by step-wide id, the step's plan, the
    engine leaders' reports). Every learner rank calls it."""
    gathered = split.link.all_gather(([], None))
    step_id, shapes = step_order([shapes for shapes, _ in gathered])
    del step_id  # the engines route by it; the learner keys by the ids they send
    reports = [r for _, r in gathered if r is not None]
    plan = policy.plan(shapes) if shapes else None
    split.link.broadcast_object(None if plan is None else plan.owner(), src=0)
    boxes = split.link.exchange([{} for _ in range(split.link.size)])
    return {i: t for box in boxes for i, t in box.items()}, plan, reports


def learner_dp_ranks(split: SplitWorld, pg_collection: Any | None) -> list[int | None]:
    """The learner data-parallel rank of every global rank (None for engine ranks); collective
    over the link, once per run."""
    return split.link.all_gather(None if pg_collection is None else pg_collection.dp.rank())
