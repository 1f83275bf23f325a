"""Trajectory routing: each trajectory of a step goes once to the learner's data-parallel replica
that trains it, whatever engine scored it and whatever placement the run has.

Every member of a transport (the torchrun world in colocated placement; the link over both
worlds in separate placement) passes its part of the step (the trajectories its engine leader
scored, [] elsewhere) and an optional report to `Router.route`:
1. shapes: every member's (slot key, shape) list and report are all-gathered (a few numbers per
   trajectory); the step-wide order is the slots' order, the order one engine sampling the whole
   step lists them in, so the plan does not depend on how the step was split over engines;
2. plan: the learner ranks plan the step with their own planner (`MegatronPolicy.plan`), and the
   transport's first member (a learner rank in every placement) broadcasts which replica trains
   each step-wide id;
3. trajectories: each one, with its images, crosses the network once, from the member that
   scored it to the members of the replica that trains it (one pickled all-to-all).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prco_mega.dist import world
from prco_mega.learner.packing import SequenceShape, shape_of
from prco_mega.types import Trajectory


class Transport(Protocol):
    """Moves small Python objects between a fixed set of members (`rank` of `size`)."""

    rank: int
    size: int

    def all_gather(self, obj: Any) -> list[Any]: ...

    def broadcast_object(self, obj: Any, src: int) -> Any: ...

    def exchange(self, outbox: list[Any]) -> list[Any]: ...


class WorldTransport:
    """`Transport` over the default group of this process's torch world (a world of one when
    torch.distributed is not started)."""

    @property
    def rank(self) -> int:
        return world.rank()

    @property
    def size(self) -> int:
        return world.world_size()

    def all_gather(self, obj: Any) -> list[Any]:
        return world.all_gather(obj)

    def broadcast_object(self, obj: Any, src: int) -> Any:
        if src != 0:
            raise ValueError(f"the world transport broadcasts from rank 0, not {src}")
        return world.broadcast(obj)

    def exchange(self, outbox: list[Any]) -> list[Any]:
        return world.exchange(outbox)


SlotKey = tuple[int, int, int]
"""(draw, task position, place among that slot's samples): a trajectory's step-wide sort key."""


def part_shapes(part: Sequence[Trajectory]) -> list[tuple[SlotKey, SequenceShape]]:
    """(step-wide sort key, `packing.shape_of`) of each trajectory of a member's part."""
    seen: dict = {}
    out = []
    for t in part:
        if t.slot is None:
            raise ValueError(f"trajectory of task {t.task_uid!r} has no slot: the rollout sets "
                             "each sample's place in the step, and routing orders by it")
        seen[t.slot] = seen.get(t.slot, 0) + 1
        out.append(((t.slot.draw, t.slot.task, seen[t.slot] - 1), shape_of(t)))
    return out


def step_order(parts: list[list[tuple[SlotKey, Any]]]) -> tuple[dict[tuple[int, int], int], list]:
    """From every member's `part_shapes` (member order): {(member, index in its part): step-wide
    id}, and the step's shapes in step-wide order."""
    order = sorted((k, r, j) for r, p in enumerate(parts) for j, (k, _) in enumerate(p))
    return ({(r, j): i for i, (_, r, j) in enumerate(order)},
            [parts[r][j][1] for _, r, j in order])


@dataclass
class Routed:
    """One step as this member sees it after routing."""

    mine: dict[int, Trajectory]
    """This member's replica's trajectories by step-wide id ({} on engine-only members)."""
    plan: Any | None
    """The step's plan (`packing.StepPlan`) on learner members; None elsewhere, and on every
    member when the step has no trajectory."""
    reports: list[Any]
    """The members' reports that are not None, in member order."""
    trained: bool
    """Whether the learner trains this step (the step has trajectories): known on every member,
    so the engines know whether new weights follow."""


class Router:
    """Routes steps over `transport`. `dp_rank`: this member's learner data-parallel rank, None on
    a member with no learner (an engine rank of separate placement). Collective: every member
    builds it once (the replicas' ranks are gathered) and calls `route` once per step."""

    def __init__(self, transport: Transport, dp_rank: int | None):
        self.transport = transport
        self.dp_of: list[int | None] = transport.all_gather(dp_rank)
        if self.dp_of[0] is None:
            raise ValueError("routing: the transport's first member must be a learner rank")

    def route(self, part: Sequence[Trajectory], report: Any = None,
              plan_step: Callable[[list[SequenceShape]], Any] | None = None) -> Routed:
        """Route this member's `part` (see the module doc); `plan_step(shapes)` plans a step on
        a learner member (None elsewhere)."""
        t = self.transport
        gathered = t.all_gather((part_shapes(part), report))
        step_id, shapes = step_order([p for p, _ in gathered])
        reports = [r for _, r in gathered if r is not None]
        plan = plan_step(shapes) if shapes and plan_step is not None else None
        owner = t.broadcast_object(None if plan is None else plan.owner(), src=0)
        outbox: list[dict[int, Trajectory]] = [{} for _ in range(t.size)]
        if owner is not None:
            for j, traj in enumerate(part):
                i = step_id[t.rank, j]
                for member, dp in enumerate(self.dp_of):
                    if dp is not None and owner[i] == dp:
                        outbox[member][i] = traj
        inbox = t.exchange(outbox)
        return Routed({i: x for box in inbox for i, x in box.items()}, plan, reports,
                      trained=owner is not None)
