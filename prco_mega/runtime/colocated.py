"""Colocated placement: every rank hosts a learner rank and one rank of a rollout engine.

Each rank samples its engine's block of the step, the engine leaders' parts are routed over the
world to the data-parallel replicas that train them (`dist.routing`), the engines sleep while the
learner trains and wake for the sync (weights first, then the KV cache), and every rank pushes into
its own engine the rows that engine rank loads (`bridge.colocated`).
"""
from __future__ import annotations

from pathlib import Path

from prco_mega.algo.registry import AlgoSettings
from prco_mega.bridge.colocated import ColocatedPublisher
from prco_mega.config import RunConfig
from prco_mega.dist.routing import Router, WorldTransport
from prco_mega.dist.world import broadcast, init_world, is_host
from prco_mega.runtime import build
from prco_mega.runtime.placement import EngineReport, StepInput, step_input
from prco_mega.runtime.warm_start import prepare_model
from prco_mega.tracking.timing import PhaseTimer


class Colocated:
    """`placement.Placement` with the engines on the learner's ranks."""

    def __init__(self, cfg: RunConfig, dirs: build.RunDirs, algo: AlgoSettings):
        init_world()
        build.announce(cfg, dirs, algo)
        model = prepare_model(cfg)
        self.cfg, self.logger = cfg, build.run_loggers(cfg, dirs, algo)
        self.policy = build.make_policy(cfg, model, objective="ppo",
                                        settings=build.loss_settings(cfg, algo))
        self.side = build.engine_side(cfg, dirs, model, algo)
        self.publisher = ColocatedPublisher(self.side.engine, cfg.engine)
        self.router = Router(WorldTransport(), self.policy.pg.dp.rank())

    def restore(self, start: int, data_state: dict | None) -> None:
        if start:
            self.side.stream.load_state_dict(data_state["stream"])
            self.publish()
        if is_host():  # what an earlier attempt saved at steps >= start is dropped
            self.side.samples.start(start)

    def evaluate(self, path: Path, *, cache: bool) -> dict | None:
        return build.evaluate_policy(self.side, path, cache=cache)

    def next_step(self, step: int, timer: PhaseTimer) -> StepInput:
        side = self.side
        scored = side.sample(side.stream, step, timer)
        side.samples.save(step, scored)  # on its steps: sampled tasks from every engine
        # a TP engine's ranks drew the same samples: its leader's part is the engine's
        leader = side.shard.placement.is_engine_leader
        part = scored.train if leader else []
        report = (EngineReport(scored.metrics, scored.weights,
                               min((t.policy_version for t in part), default=step))
                  if leader else None)
        return step_input(self.router.route(part, report, plan_step=self.policy.plan), step)

    def before_learn(self) -> None:
        self.side.engine.sleep(self.cfg.engine.sleep_level)

    def publish(self) -> dict[str, float]:
        return self.publisher.publish(self.policy)

    def data_state(self) -> dict:
        # every rank walks the same stream; rank 0's position is everyone's
        return broadcast({"stream": self.side.stream.state_dict() if is_host() else None})

    def close(self) -> None:
        pass
