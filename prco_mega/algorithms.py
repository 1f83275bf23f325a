"""One registry entry per algorithm: its loss preset, how it samples a step (rollout plus credit
assignment), and how it is evaluated.

The loop asks the entry's sampler for a step's scored trajectories and nothing else differs
between algorithms. Presets are data: `AlgoSettings` values per entry, and a config key that is
set (`algo.clip_high=0.3`) overrides the preset's value (`resolve`).

- prco: Observer utility reward, per-role group advantages, Solver-group selection (PRCO.md),
  token-level aggregation, no std division, and DAPO's clip-higher (0.28): the paper compares
  against DAPO and trains with its PPO settings, so the ablation changes credit assignment only.
- prco_shared: the same with the Observer rewarded by the Solver's outcome reward (the ablation).
- grpo: as published: std-scaled group advantages, symmetric clip 0.2, sequence-level mean.
- dapo: clip-higher (0.28), token-level aggregation, std-scaled advantages, dynamic sampling that
  draws more prompts until the step has `data.prompts_per_step` groups with non-zero reward
  variance (at most `max_extra_draws` extra batches), and the soft overlong penalty.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from prco_mega.roles import PromptSet
from prco_mega.rollout.placement import Shard
from prco_mega.rollout.single import SingleRoleRollout
from prco_mega.rollout.two_stage import TwoStageRollout, settings_from_section
from prco_mega.scoring import CreditAssigner, LeakageFn, PRCOCredit, Scored, SingleRoleCredit
from prco_mega.timing import PhaseTimer

if TYPE_CHECKING:
    import torch

    from prco_mega.config import AlgoSection, RunConfig
    from prco_mega.data.stream import TaskStream
    from prco_mega.rollout.engine import RolloutEngine


@dataclass(frozen=True)
class AlgoSettings:
    """The preset fields of `config.AlgoSection`, resolved."""

    clip_low: float = 0.2
    clip_high: float = 0.2
    level: Literal["token", "sequence"] = "token"
    scale_by_std: bool = False
    dynamic_sampling: bool = False
    max_extra_draws: int = 4
    overlong_buffer: int | None = 0
    """Tokens; None (in a preset) = a fifth of the Solver's `max_new_tokens` (DAPO's 4,096 of
    20,480)."""


class Sampler(Protocol):
    def __call__(self, stream: TaskStream, step: int, timer: PhaseTimer) -> Scored: ...


@dataclass(frozen=True)
class Algorithm:
    name: str
    preset: AlgoSettings
    eval_mode: Literal["prco", "single"]
    """How `eval.synthetic.evaluate` runs the policy: Observer -> Solver, or look-and-answer."""
    build: Callable[..., Sampler]
    """`build(cfg, settings, engine, prompts, leakage, generator, shard) -> Sampler`."""


def step_seed(seed: int, step: int) -> int:
    """Per-step seed, so a resumed run draws what the uninterrupted one drew at that step."""
    return (seed * 1_000_003 + step) % (2**63)


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


def _prco(cfg: RunConfig, s: AlgoSettings, engine, prompts, leakage, generator, shard, *,
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


REGISTRY: dict[str, Algorithm] = {
    "prco": Algorithm("prco", AlgoSettings(clip_high=0.28), "prco",
                      lambda *a: _prco(*a, shared=False)),
    "prco_shared": Algorithm("prco_shared", AlgoSettings(clip_high=0.28), "prco",
                             lambda *a: _prco(*a, shared=True)),
    "grpo": Algorithm("grpo", AlgoSettings(level="sequence", scale_by_std=True), "single",
                      _single),
    "dapo": Algorithm("dapo", AlgoSettings(clip_high=0.28, scale_by_std=True,
                                           dynamic_sampling=True, overlong_buffer=None),
                      "single", _single),
}


def resolve(section: AlgoSection, max_new_tokens: int) -> AlgoSettings:
    """The entry's preset with every field the config sets (not None) taking the config's value;
    `max_new_tokens` (the Solver's) sizes a preset's overlong buffer."""
    entry = REGISTRY[section.name]
    given = {f.name: getattr(section, f.name) for f in dataclasses.fields(AlgoSettings)
             if getattr(section, f.name) is not None}
    out = dataclasses.replace(entry.preset, **given)
    if out.overlong_buffer is None:
        out = dataclasses.replace(out, overlong_buffer=max(1, max_new_tokens // 5))
    if out.max_extra_draws > 15:  # each draw of a step has its own seed range (16 per step)
        raise ValueError(f"algo.max_extra_draws ({out.max_extra_draws}) must be <= 15")
    if out.overlong_buffer > max_new_tokens:
        raise ValueError(f"algo.overlong_buffer ({out.overlong_buffer}) must be <= "
                         f"solver.max_new_tokens ({max_new_tokens})")
    if out.dynamic_sampling and entry.eval_mode != "single":
        raise ValueError(f"algo.dynamic_sampling is for the single-role baselines; {entry.name} "
                         "selects its Solver groups itself")
    return out


def build_sampler(cfg: RunConfig, settings: AlgoSettings, engine: RolloutEngine,
                  prompts: PromptSet, leakage: LeakageFn, generator: Any, shard: Shard) -> Sampler:
    """The entry's sampler for this rank's engine (`shard`: its block of each step's tasks)."""
    return REGISTRY[cfg.algo.name].build(cfg, settings, engine, prompts, leakage, generator, shard)
