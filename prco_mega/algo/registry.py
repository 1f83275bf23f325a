"""One registry entry per algorithm: its loss preset, how it samples a step (rollout plus credit
assignment), and how it is evaluated.

The run builds the entry's sampler (`runtime.samplers`) and asks it for a step's scored
trajectories; nothing else differs between algorithms. Presets are data: `AlgoSettings` values
per entry, and a config key that is set (`algo.clip_high=0.3`) overrides the preset's value
(`resolve`).

- prco: Observer utility reward, per-role group advantages, Solver-group selection
  (docs/algorithm.md),
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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from prco_mega.config import AlgoSection


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


@dataclass(frozen=True)
class Algorithm:
    name: str
    preset: AlgoSettings
    eval_mode: Literal["prco", "single"]
    """How `eval.synthetic.evaluate` runs the policy: Observer -> Solver, or look-and-answer."""
    sampler: Literal["two_stage", "single"]
    """How a step is sampled (`runtime.samplers`): Observer -> Solver with per-role credit, or
    one look-and-answer trajectory with an outcome reward."""
    shared_reward: bool = False
    """two_stage only: the Observer is rewarded by the Solver's outcome reward (the ablation)."""


def step_seed(seed: int, step: int) -> int:
    """Per-step seed, so a resumed run draws what the uninterrupted one drew at that step."""
    return (seed * 1_000_003 + step) % (2**63)


REGISTRY: dict[str, Algorithm] = {
    "prco": Algorithm("prco", AlgoSettings(clip_high=0.28), "prco", "two_stage"),
    "prco_shared": Algorithm("prco_shared", AlgoSettings(clip_high=0.28), "prco", "two_stage",
                             shared_reward=True),
    "grpo": Algorithm("grpo", AlgoSettings(level="sequence", scale_by_std=True), "single",
                      "single"),
    "dapo": Algorithm("dapo", AlgoSettings(clip_high=0.28, scale_by_std=True,
                                           dynamic_sampling=True, overlong_buffer=None),
                      "single", "single"),
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
