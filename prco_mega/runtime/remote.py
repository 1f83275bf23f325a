"""Separate placement, the learner's side: the engines sample on ranks of their own
(`engine_worker`) while the learner trains on its own.

The torchrun world is split at start (`dist.link.split_world`): learner ranks [0, L), engine ranks
[L, W). Per RL step k the two sides meet twice over the links, always in this order on both:
- X(k): the engine leaders' parts of step k are routed to the learner's data-parallel replicas
  (`dist.routing` over the link spanning both worlds), with the engines' reports;
- W(k+1): after the learner's update, each pipeline stage streams its weights to the engine ranks
  (`bridge.remote`). A step with nothing to train has no update and no W.
Where the engines sample relative to W (`rollout.max_staleness`) is the engine worker's
business; the learner's loop is the same as in colocated placement.
"""
from __future__ import annotations

import os
from pathlib import Path

from prco_mega.algo.registry import AlgoSettings
from prco_mega.bridge.remote import RemotePublisher
from prco_mega.config import RunConfig
from prco_mega.dist.link import SplitWorld
from prco_mega.dist.routing import Router
from prco_mega.runtime import build
from prco_mega.runtime.placement import StepInput, step_input
from prco_mega.runtime.warm_start import prepare_model
from prco_mega.tracking.timing import PhaseTimer


def learner_world_size(cfg: RunConfig) -> int:
    """Learner ranks: `PRCO_LEARNER_WORLD_SIZE` (the launcher exports it), else the cluster
    section's learner GPUs."""
    if "PRCO_LEARNER_WORLD_SIZE" in os.environ:
        return int(os.environ["PRCO_LEARNER_WORLD_SIZE"])
    return cfg.cluster.world_size


class Remote:
    """`placement.Placement` with the engines on ranks of their own. The learner's first rank
    writes the config, metrics, checkpoints, curves and report; the engines' first rank the
    held-out evaluations and saved rollouts."""

    def __init__(self, cfg: RunConfig, dirs: build.RunDirs, algo: AlgoSettings,
                 split: SplitWorld):
        build.announce(cfg, dirs, algo)
        model = prepare_model(cfg)
        split.link.broadcast_object(str(model), src=0)
        self.split = split
        self.policy = build.make_policy(cfg, model, objective="ppo",
                                        settings=build.loss_settings(cfg, algo))
        self.logger = build.run_loggers(cfg, dirs, algo)
        self.router = Router(split.link, self.policy.pg.dp.rank())
        self.publisher = RemotePublisher(split, cfg.engine)
        self.stream_state: dict | None = None

    def restore(self, start: int, data_state: dict | None) -> None:
        self.split.link.broadcast_object((start, data_state), src=0)
        if start:
            self.publish()

    def evaluate(self, path: Path, *, cache: bool) -> dict | None:
        del path, cache  # the engines evaluate (`engine_worker`) and send the summary
        return self.split.link.broadcast_object(None, src=self.split.learner_size)

    def next_step(self, step: int, timer: PhaseTimer) -> StepInput:
        with timer("wait"):  # the engines' rollout, less what overlapped the last update
            routed = self.router.route([], plan_step=self.policy.plan)
        self.stream_state = routed.reports[0].stream_state
        return step_input(routed, step)

    def before_learn(self) -> None:
        pass

    def publish(self) -> dict[str, float]:
        return self.publisher.publish(self.policy)

    def data_state(self) -> dict:
        return {"stream": self.stream_state}

    def close(self) -> None:
        self.split.link.all_gather(None)  # the engines stay up until the report is written
