"""Separate placement, the engines' side: the engine ranks' own loop.

Each engine rank samples its engine's block of every step, its engine leader hands the part to
the learner (`dist.routing`, over the link spanning both worlds) and every engine rank takes the
learner's new weights (`bridge.remote.WeightReceiver`) when the learner trained. The engines'
first rank writes the held-out evaluations and the saved rollouts.

Update j is the learner's training on step j; W(k) carries the weights after update k-1 (see
`remote` for X and W). `rollout.off_policy_steps` says where the engines sample relative to W:
- 0 (on-policy): W(k), sample k, X(k): the engines wait while the learner trains;
- 1: sample k, W(k), X(k): the engines sample step k with the weights of W(k-1) while the
  learner makes update k-1, then take W(k) and hand step k over.
Every trajectory records the policy version that drew it (`policy_version`: the number of updates
in its weights), so the loss knows its lag (`train/policy_lag`) and TIS can correct it. The order
of link operations is the same in both modes (X0, W1, X1, W2, ...), so the two sides never wait
on each other except for data.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from prco_mega.algo.registry import AlgoSettings
from prco_mega.bridge.hf_io import load_hf_config
from prco_mega.bridge.remote import WeightReceiver
from prco_mega.config import RunConfig
from prco_mega.dist.link import SplitWorld
from prco_mega.dist.routing import Router
from prco_mega.dist.world import is_host
from prco_mega.runtime import build
from prco_mega.runtime.placement import EngineReport
from prco_mega.tracking.timing import PhaseTimer
from prco_mega.types import Trajectory


def sampling_version(step: int, off_policy_steps: int) -> int:
    """Updates in the engines' weights when they sample step `step`."""
    if off_policy_steps not in (0, 1):
        raise ValueError(f"rollout.off_policy_steps must be 0 or 1, got {off_policy_steps}")
    return max(0, step - off_policy_steps)


def stamp(part: Sequence[Trajectory], version: int) -> list[Trajectory]:
    """The part with the policy version that drew it."""
    return [dataclasses.replace(t, policy_version=version) for t in part]


def run_engine_worker(cfg: RunConfig, dirs: build.RunDirs, algo: AlgoSettings,
                      split: SplitWorld) -> None:
    """The engine ranks' whole run, paired with the learner's loop over `placement.Remote`."""
    model = Path(split.link.broadcast_object(None, src=0))
    side = build.engine_side(cfg, dirs, model, algo)
    weights = WeightReceiver(side.engine, load_hf_config(model), split, cfg.engine)
    router = Router(split.link, None)
    start, data_state = split.link.broadcast_object(None, src=0)
    if start:
        side.stream.load_state_dict(data_state["stream"])
        weights.receive()
    if is_host():
        side.samples.start(start)
    before = build.evaluate_policy(side, dirs.root / "eval_start.json", cache=start > 0)
    split.link.broadcast_object(before, src=split.learner_size)
    trained = False  # whether the learner trained the previous step (then W follows)
    for step in range(start, cfg.run.steps):
        trained = sample_and_deliver(side, router, weights, step, start, trained,
                                     cfg.rollout.off_policy_steps)
    if trained:  # the last update's weights
        weights.receive()
    after = build.evaluate_policy(side, dirs.root / "eval_end.json", cache=False)
    split.link.broadcast_object(after, src=split.learner_size)
    split.link.all_gather(None)


def sample_and_deliver(side: build.EngineSide, router: Router, weights: WeightReceiver,
                       step: int, start: int, trained: bool, off_policy_steps: int) -> bool:
    """One step on an engine rank: W (after the previous step's update), sampling and X in the
    order `off_policy_steps` gives; returns whether the learner trains this step."""
    timer = PhaseTimer()
    # a resumed run's first step is drawn by the checkpoint's weights, whatever the lag
    version = step if step == start else sampling_version(step, off_policy_steps)
    if trained and not off_policy_steps:
        weights.receive()
    scored = side.sample(side.stream, step, timer)
    side.samples.save(step, scored)
    if trained and off_policy_steps:
        weights.receive()
    leader = side.shard.placement.is_engine_leader
    part = stamp(scored.train, version) if leader else []
    report = (EngineReport({**scored.metrics, **timer.metrics()}, scored.weights, version,
                           side.stream.state_dict()) if leader else None)
    return router.route(part, report).trained
