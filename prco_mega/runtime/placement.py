"""What the learner loop asks of a placement: where a step's trajectories come from, where the
weights go, and who evaluates. Two implementations: `colocated.Colocated` (engines on the
learner's ranks) and `remote.Remote` (engines on ranks of their own, `engine_worker`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from prco_mega.algo.credit import combine_metrics
from prco_mega.dist.routing import Routed
from prco_mega.tracking.timing import PhaseTimer
from prco_mega.types import Trajectory


@dataclass(frozen=True)
class EngineReport:
    """What an engine leader tells the learner about its part of a step."""

    metrics: dict[str, float]
    weight: dict[str, float]
    """The weight of each metric when the engines' are combined (`credit.combine_metrics`)."""
    policy_version: int
    """Updates in the weights that drew this part (the oldest, if they differ)."""
    stream_state: dict | None = None
    """The task stream's position after the step (every engine walks the same stream), for the
    learner's checkpoint; None where the learner's ranks walk the stream themselves."""


@dataclass
class StepInput:
    """One step as the learner receives it."""

    mine: dict[int, Trajectory]
    """This data-parallel replica's trajectories by step-wide id."""
    plan: Any | None
    """The step's `packing.StepPlan`; None when the step has nothing to train."""
    metrics: dict[str, float]
    """The engines' metrics, combined."""
    policy_version: int
    """The oldest policy version among the step's trajectories."""


def step_input(routed: Routed, step: int) -> StepInput:
    """The learner's view of a routed step (its reports are the engine leaders')."""
    reports: list[EngineReport] = routed.reports
    return StepInput(routed.mine, routed.plan,
                     combine_metrics([(r.metrics, r.weight) for r in reports]),
                     min((r.policy_version for r in reports), default=step))


class Placement(Protocol):
    """The learner side of a run's placement; every learner rank calls each method in the same
    order (they are collective over the learner's ranks and, where they reach the engines, over
    the engines' ranks too)."""

    policy: Any
    """The learner (`learner.policy.MegatronPolicy`)."""
    logger: Any
    """The step metrics' loggers (`tracking.loggers.Loggers`), used on the host only."""

    def restore(self, start: int, data_state: dict | None) -> None:
        """After the learner loaded a checkpoint of step `start` (0: none): the engines
        continue the task stream from `data_state` and get the learner's weights."""

    def evaluate(self, path: Path, *, cache: bool) -> dict | None:
        """The held-out evaluation of the engines' current weights; its summary on the host."""

    def next_step(self, step: int, timer: PhaseTimer) -> StepInput:
        """Step `step`'s trajectories routed to this replica, with the engines' metrics."""

    def before_learn(self) -> None:
        """Called before the learner trains (colocated engines free their memory)."""

    def publish(self) -> dict[str, float]:
        """The learner's weights to the engines; the sync's metrics."""

    def data_state(self) -> dict:
        """What a checkpoint saves besides the learner: the task stream's position."""

    def close(self) -> None:
        """The end of the run (the engines may stop)."""
