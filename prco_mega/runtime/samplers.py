"""Samplers: how a step's scored trajectories are drawn for an algorithm of the registry
(`algo.registry`): the rollout (two-stage Observer -> Solver, or one look-and-answer trajectory)
plus its credit assignment, over this rank's engine and its block of the step (`Shard`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from prco_mega.algo.credit import CreditAssigner, LeakageFn, PRCOCredit, Scored, SingleRoleCredit
from prco_mega.algo.registry import REGISTRY, AlgoSettings, step_seed
from prco_mega.roles import PromptSet
from prco_mega.rollout.placement import Shard
from prco_mega.rollout.single import SingleRoleRollout
from prco_mega.rollout.two_stage import TwoStageRollout, settings_from_section
from prco_mega.tracking.timing import PhaseTimer

if TYPE_CHECKING:
    import torch

    from prco_mega.config import RunConfig
    from prco_mega.data.stream import TaskStream
    from prco_mega.rollout.engine import RolloutEngine


class Sampler(Protocol):
    def __call__(self, stream: TaskStream, step: int, timer: PhaseTimer) -> Scored: ...


@dataclass
class OneDraw:
    """One batch of prompts per step: this engine's block of it is rolled out, then credited."""

    rollout: Callable
    credit: CreditAssigner
    generator: torch.Generator
    seed: int
    shard: Shard

    def __call__(self, stream: TaskStream, step: int, timer: PhaseTimer) -> Scored:
        tasks = stream.next_batch()  # every rank walks the same stream and takes its block
        block = self.shard.block(len(tasks))
        with timer("rollout"):
            rollouts = self.rollout(tasks[block.start:block.stop], step, policy_version=step,
                                    offset=block.start)
        self.generator.manual_seed(step_seed(self.seed, step))
        with timer("score"):
            return self.credit(rollouts)


@dataclass
class DynamicSampling:
    """DAPO's dynamic sampling: batches of prompts are drawn until `target` groups with non-zero
    reward variance are found over all engines, or `max_extra_draws` extra batches were drawn;
    the first `target` informative groups in (draw, task) order train, as one engine drawing the
    whole step would pick them. Draws, prompts and groups are counted in the step's metrics."""

    rollout: SingleRoleRollout
    credit: SingleRoleCredit
    target: int
    max_extra_draws: int
    shard: Shard

    def __call__(self, stream: TaskStream, step: int, timer: PhaseTimer) -> Scored:
        answers, prompts, draws, found, drawn = [], 0, 0, 0, []
        while draws == 0 or (found < self.target and draws <= self.max_extra_draws):
            tasks = stream.next_batch()
            block = self.shard.block(len(tasks))
            with timer("rollout"):
                rollouts = self.rollout(tasks[block.start:block.stop], step, policy_version=step,
                                        offset=block.start, draw=draws)
            with timer("score"):
                answers += self.credit.reward(rollouts)
                found = sum(self.shard.gather(len(self.credit.informative_groups(answers))))
            draws, prompts, drawn = draws + 1, prompts + len(rollouts), drawn + rollouts
        with timer("score"):
            mine = self.credit.informative_groups(answers)
            # group ids sort by (draw, task position): the step's first `target` informative ones
            chosen = sorted(g for ids in self.shard.gather(mine) for g in ids)[: self.target]
            scored = self.credit.assign(answers, keep_groups=set(chosen))
        scored.metrics.update({"sampling/draws": float(draws), "sampling/prompts": float(prompts),
                               "sampling/groups_found": float(len(mine)),
                               "sampling/groups_trained": float(len(set(mine) & set(chosen)))})
        scored.weights["sampling/draws"] = 1.0  # the same on every engine: a mean, not a sum
        scored.rollouts = drawn
        return scored


def _two_stage(cfg: RunConfig, s: AlgoSettings, engine, prompts, leakage, generator, shard, *,
               shared: bool):
    rollout = TwoStageRollout(engine, prompts, settings_from_section(cfg.observer, cfg.run.seed),
                              settings_from_section(cfg.solver, cfg.run.seed + 1),
                              cfg.algo.warmup_steps)
    credit = PRCOCredit(leakage, generator, lam=cfg.reward.lam, shared=shared,
                        scale_by_std=s.scale_by_std)
    return OneDraw(rollout, credit, generator, cfg.run.seed, shard)


def _single(cfg: RunConfig, s: AlgoSettings, engine, prompts, leakage, generator, shard):
    rollout = SingleRoleRollout(engine, prompts, settings_from_section(cfg.solver, cfg.run.seed))
    overlong = (cfg.solver.max_new_tokens, s.overlong_buffer) if s.overlong_buffer else None
    credit = SingleRoleCredit(lam=cfg.reward.lam, dynamic_sampling=s.dynamic_sampling,
                              scale_by_std=s.scale_by_std, overlong=overlong)
    if s.dynamic_sampling:
        return DynamicSampling(rollout, credit, cfg.data.prompts_per_step, s.max_extra_draws,
                               shard)
    return OneDraw(rollout, credit, generator, cfg.run.seed, shard)


def build_sampler(cfg: RunConfig, settings: AlgoSettings, engine: RolloutEngine,
                  prompts: PromptSet, leakage: LeakageFn, generator: Any, shard: Shard) -> Sampler:
    """The entry's sampler for this rank's engine (`shard`: its block of each step's tasks)."""
    entry = REGISTRY[cfg.algo.name]
    if entry.sampler == "two_stage":
        return _two_stage(cfg, settings, engine, prompts, leakage, generator, shard,
                          shared=entry.shared_reward)
    return _single(cfg, settings, engine, prompts, leakage, generator, shard)
