"""Separate placement, the engines' side: the engine ranks' own loop.

Each engine rank samples its engine's block of every step, its engine leader hands the part to
the learner (`dist.routing`, over the link spanning both worlds) and every engine rank takes the
learner's new weights (`bridge.remote.WeightReceiver`) when the learner trained. The engines'
first rank writes the held-out evaluations and the saved rollouts.

Update j is the learner's training on step j; W(j+1) carries the weights after it, and X(j) hands
step j to the learner (see `remote`). Both sides meet in the order X0, W1, X1, W2, ... . With
`rollout.max_staleness: k` the engines sample ahead while the learner trains, never with weights
more than k updates older than the update that trains on the sample: step t is sampled with
version v only if t - v <= k. Per step s the engine worker
1. takes W(s) (version s) if the learner trained step s-1;
2. samples step s now if it has not yet (always so for k = 0: on-policy);
3. hands step s over (X(s));
4. samples ahead, while the learner makes update s, every step up to s + k with version s.
So k = 0 is the synchronous loop (W(s), sample s, X(s)) and k = 1 samples step s+1 during update
s. Sampled steps wait in a queue; every trajectory records the policy version that drew it
(`policy_version`), so the loss knows its lag (`train/policy_lag`) and a correction can use it.
At each checkpoint the engine ranks save their queue (and the stream position after it), so a
resumed run trains on the very samples the uninterrupted run trains on.

With `rollout.partial_rollouts` the engines generate in chunks (`rollout.partial`) and, between
chunks, take the learner's new weights as soon as it publishes them and hand over the next queued
step (`Worker.serve`): a sequence in flight continues from its prefix under the new weights, each
token keeping the version and log-prob that drew it. When weights arrive then depends on timing,
so such a run is not reproducible token for token (the synchronous order above is).

When the cluster asks the run to stop (`runtime.preemption`), the learner decides after a step
and tells the engine ranks, which save their queue with the learner's checkpoint and exit (not
yet with partial rollouts: there the engine ranks end on the signal itself).
"""
from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prco_mega.algo.registry import AlgoSettings
from prco_mega.bridge.hf_io import load_hf_config
from prco_mega.bridge.remote import WeightReceiver
from prco_mega.config import RunConfig
from prco_mega.dist.link import SplitWorld
from prco_mega.dist.routing import Router
from prco_mega.dist.world import all_gather, broadcast, is_host, rank
from prco_mega.runtime import build
from prco_mega.rollout.partial import PartialRollouts
from prco_mega.runtime.placement import EngineReport
from prco_mega.runtime.preemption import caught, engines_stop
from prco_mega.tracking.timing import PhaseTimer
from prco_mega.types import Trajectory


def stamp(part: Sequence[Trajectory], version: int) -> list[Trajectory]:
    """The part with the policy version that drew it (the oldest of its tokens' when new weights
    arrived while it was generated)."""
    return [dataclasses.replace(t, policy_version=min(t.token_versions or [version]))
            for t in part]


@dataclass
class Ahead:
    """An engine rank's sampled steps not yet handed to the learner, and its weights' version."""

    version: int
    """Updates in the engine's weights."""
    queue: dict[int, tuple[list[Trajectory], EngineReport | None]] = field(default_factory=dict)
    """Step -> (the leader's part, its report; [] and None on the other ranks of an engine)."""
    next_step: int = 0
    """The first step not sampled yet."""
    stream_state: dict | None = None
    """The task stream's position after `next_step - 1` (what a resumed run continues from)."""


def state_path(root: Path, step: int) -> Path:
    """This engine rank's queue at the learner's checkpoint of `step`."""
    return Path(root) / "engine_state" / f"step_{step:08d}.rank{rank()}.pkl"


def save_ahead(root: Path, step: int, ahead: Ahead, keep_last: int) -> None:
    """Write `ahead` atomically beside the learner's checkpoint of `step`; keep the newest
    `keep_last` (as the learner keeps its checkpoints)."""
    path = state_path(root, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(ahead, protocol=pickle.HIGHEST_PROTOCOL))
    tmp.replace(path)
    mine = sorted(path.parent.glob(f"step_*.rank{rank()}.pkl"))
    for old in mine[:-keep_last]:
        old.unlink()


def load_ahead(root: Path, step: int) -> Ahead | None:
    """The queue saved with the checkpoint of `step`, if this rank saved one."""
    path = state_path(root, step)
    return pickle.loads(path.read_bytes()) if path.exists() else None


def sample_step(side: build.EngineSide, ahead: Ahead) -> None:
    """Sample `ahead.next_step` with the engine's current weights and queue it."""
    step, timer = ahead.next_step, PhaseTimer()
    scored = side.sample(side.stream, step, timer)
    side.samples.save(step, scored)
    leader = side.shard.placement.is_engine_leader
    part = stamp(scored.train, ahead.version) if leader else []
    state = side.stream.state_dict()
    # trajectories whose tokens came from more than one policy version (partial rollouts)
    mixed = float(sum(len(set(t.token_versions or ())) > 1 for t in part))
    report = (EngineReport({**scored.metrics, **timer.metrics(), "rollout/mixed_versions": mixed},
                           scored.weights, min((t.policy_version for t in part),
                                               default=ahead.version), state)
              if leader else None)
    ahead.queue[step] = (part, report)
    ahead.next_step, ahead.stream_state = step + 1, state


def engine_step(side: build.EngineSide, router: Router, weights: WeightReceiver, ahead: Ahead,
                step: int, trained: bool, last: int, max_staleness: int) -> bool:
    """Step `step` on an engine rank (1-4 of the module doc); returns whether the learner trains
    it. `last`: the run's last step."""
    if trained:
        weights.receive()
        ahead.version += 1
    if step not in ahead.queue:
        sample_step(side, ahead)
    part, report = ahead.queue.pop(step)
    trained = router.route(part, report).trained
    # while the learner makes update `step`: a sample of step t drawn now is t - version old
    while ahead.next_step <= min(ahead.version + max_staleness, last):
        sample_step(side, ahead)
    return trained


@dataclass
class Worker:
    """Partial rollouts: the engine rank's link operations (W, X) served whenever they can
    proceed, between generation chunks and between steps, in the order the learner makes them."""

    side: build.EngineSide
    router: Router
    weights: WeightReceiver
    ahead: Ahead
    max_staleness: int
    last: int
    handed: int = 0
    """The next step to hand over."""
    pending: bool = False
    """The learner trains the last step handed over: its new weights come next."""

    def take_weights(self) -> None:
        self.weights.receive()
        self.ahead.version += 1
        self.pending = False

    def hand_over(self) -> None:
        part, report = self.ahead.queue.pop(self.handed)
        self.pending = self.router.route(part, report).trained
        self.handed += 1

    def serve(self) -> int:
        """What can proceed without waiting: the learner's published weights, then the next
        queued step; the version the engine then holds (`PartialRollouts.between`). Collective
        over the engines' world: its first rank decides whether the weights are there."""
        while True:
            if self.pending and broadcast(self.weights.ready()):
                self.take_weights()
            elif not self.pending and self.handed in self.ahead.queue:
                self.hand_over()
            else:
                return self.ahead.version

    def run(self) -> bool:
        """Every step handed over, sampling ahead within the staleness bound whenever the next
        link operation would wait; returns whether the last step trains."""
        while self.handed <= self.last:
            self.serve()
            if self.handed > self.last:
                break
            ahead = self.ahead
            if (ahead.next_step <= min(ahead.version + self.max_staleness, self.last)
                    or ahead.next_step == self.handed):  # the step the learner waits for
                sample_step(self.side, ahead)
            elif self.pending:
                self.take_weights()  # nothing to draw within the bound: wait for the learner
        return self.pending


def run_engine_worker(cfg: RunConfig, dirs: build.RunDirs, algo: AlgoSettings,
                      split: SplitWorld) -> None:
    """The engine ranks' whole run, paired with the learner's loop over `remote.Remote`."""
    model = Path(split.link.broadcast_object(None, src=0))
    worker: Worker | None = None

    def partial(engine):  # the sampler's engine generates in chunks, serving the links between
        return PartialRollouts(engine, cfg.rollout.chunk_tokens, lambda: worker.serve(),
                               lambda mine: any(all_gather(mine)))

    side = build.engine_side(cfg, dirs, model, algo,
                             partial if cfg.rollout.partial_rollouts else None)
    weights = WeightReceiver(side.engine, load_hf_config(model), split, cfg.engine)
    router = Router(split.link, None)
    if cfg.rollout.partial_rollouts:
        worker = Worker(side, router, weights, Ahead(0), cfg.rollout.max_staleness, 0)
    start, data_state = split.link.broadcast_object(None, src=0)
    ahead = load_ahead(dirs.root, start) if start else None
    if ahead is None:  # a fresh run, or a checkpoint without the engines' queue
        ahead = Ahead(version=start, next_step=start)
        if start:
            side.stream.load_state_dict(data_state["stream"])
    else:
        side.stream.load_state_dict(ahead.stream_state)
    if start:  # the checkpoint's weights
        weights.receive()
        ahead.version = start
    if is_host():  # saved rollouts of the steps already queued stay
        side.samples.start(ahead.next_step)
    before = build.evaluate_policy(side, dirs.root / "eval_start.json", cache=start > 0)
    split.link.broadcast_object(before, src=split.learner_size)
    trained, steps, k = False, cfg.run.steps, cfg.rollout.max_staleness
    if worker is not None:
        worker.ahead, worker.handed, worker.last = ahead, start, steps - 1
        trained = worker.run()
    every, keep = cfg.learner.checkpoint.interval, cfg.learner.checkpoint.keep_last
    with caught():  # a signal stops the engines only when the learner decides so
        for step in range(start, steps if worker is None else start):
            if trained:
                weights.receive()
                ahead.version += 1
            # the learner decides whether the run stops after each step but the last, once it
            # has sent that step's weights (`preemption.StopVote`): then it saves this step
            signum = engines_stop(split.link) if step > start else 0
            if signum:
                save_ahead(dirs.root, step, ahead, keep)
                raise SystemExit(128 + signum)
            trained = engine_step(side, router, weights, ahead, step, False, steps - 1, k)
            if (every and (step + 1) % every == 0) or step + 1 == steps:  # the learner saves
                save_ahead(dirs.root, step + 1, ahead, keep)
    if trained:  # the last update's weights
        weights.receive()
    after = build.evaluate_policy(side, dirs.root / "eval_end.json", cache=False)
    split.link.broadcast_object(after, src=split.learner_size)
    split.link.all_gather(None)
