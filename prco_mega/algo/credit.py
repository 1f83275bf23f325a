"""Credit assignment: rewards, per-role advantages and Solver-group selection for one RL step.

A credit assigner turns the step's rollouts into the trajectories that enter the loss (reward and
advantage set) plus metrics. The algorithms (PRCO, PRCO with a shared outcome reward, GRPO, DAPO)
are different assigners chosen by config, so the loop (`runtime.loop`) has no per-algorithm branch.
It sits above `rewards` and `algo`, which import nothing of each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from statistics import fmean
from typing import Protocol

import torch

from prco_mega.algo import (dapo_keep_mask, group_advantages, grpo_advantages, overlong_penalty,
                            select_solver_groups)
from prco_mega.data.captions import misread_keeps_answer, perception_accuracy
from prco_mega.rewards.format import format_score
from prco_mega.rewards.observer import (observer_utility_rewards, shared_outcome_observer_rewards,
                                        solver_reward)
from prco_mega.rewards.verifier import verify
from prco_mega.types import Role, Task, TaskRollout, Trajectory


@dataclass
class Scored:
    train: list[Trajectory]
    """Trajectories that enter the loss, with `reward` and `advantage` set."""
    metrics: dict[str, float]
    weights: dict[str, float] = field(default_factory=dict)
    """How many items each mean in `metrics` averages (answers, captions); a metric without a
    weight is a count. `combine_metrics` merges the engines' shares of a step with them."""
    rollouts: list[TaskRollout] = field(default_factory=list)
    """The rollouts scored, rewards and advantages set on their trajectories in place: what saved
    samples show (`tracking.rollouts`); nothing trains from this list."""


def combine_metrics(parts: list[tuple[dict[str, float], dict[str, float]]]) -> dict[str, float]:
    """One step's metrics from its engines' `(metrics, weights)`: weighted means of the means,
    sums of the counts (a world of one returns its metrics unchanged)."""
    if len(parts) == 1:
        return dict(parts[0][0])
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for metrics, _ in parts for k in metrics):
        have = [(m[key], w.get(key)) for m, w in parts if key in m]
        if any(w is not None for _, w in have):
            total = sum(w or 0.0 for _, w in have)
            out[key] = sum(v * (w or 0.0) for v, w in have) / total if total else 0.0
        else:
            out[key] = sum(v for v, _ in have)
    return out


class LeakageFn(Protocol):
    def __call__(self, questions: list[str], captions: list[str], answers: list[str]) -> list[int]: ...


class CreditAssigner(Protocol):
    def __call__(self, rollouts: list[TaskRollout]) -> Scored: ...


def solver_rewards(answers: list[Trajectory], task: Task, lam: float) -> list[float]:
    """r_S = lam * V(y, a) + (1 - lam) * F(y); stores V in `meta["correct"]`."""
    out = []
    for y in answers:
        correct = verify(y.text, task.answer, task.choices)
        y.meta["correct"] = correct
        y.reward = solver_reward(correct, format_score(y.text), lam)
        out.append(y.reward)
    return out


def _set_advantages(trajs: list[Trajectory], advantages: torch.Tensor) -> None:
    for t, a in zip(trajs, advantages.tolist()):
        t.advantage = float(a)


def _centre(trajs: list[Trajectory], scale_by_std: bool) -> None:
    """Mean-centre rewards per (group_id, role) over `trajs` in one vectorised call."""
    if not trajs:
        return
    rewards = torch.tensor([t.reward for t in trajs], dtype=torch.float64)
    groups = torch.tensor([t.group_id for t in trajs])
    roles = torch.tensor([int(t.role) for t in trajs])
    _set_advantages(trajs, group_advantages(rewards, groups, roles, scale_by_std=scale_by_std))


_ANSWER_MEANS = ("solver/accuracy", "solver/reward", "solver/response_len")
_CAPTION_MEANS = ("observer/reward", "observer/leak_rate", "observer/caption_len")
_PERCEPTION_MEANS = ("observer/perception_acc", "observer/misread_kept_answer_rate")


def _weights(answers: int, captions: int = 0, perceived: int = 0) -> dict[str, float]:
    return {**dict.fromkeys(_ANSWER_MEANS, float(answers)),
            **dict.fromkeys(_CAPTION_MEANS, float(captions)),
            **dict.fromkeys(_PERCEPTION_MEANS, float(perceived))}


def _caption_metrics(rollouts: list[TaskRollout]) -> dict[str, float]:
    """Perception of the sampled captions, and the share whose misreads keep the answer (which
    the utility reward cannot see); empty without scene facts."""
    pairs = [(c.text, r.task.facts) for r in rollouts if r.task.facts for c in r.observer]
    if not pairs:
        return {}
    return {"observer/perception_acc": fmean(perception_accuracy(*p) for p in pairs),
            "observer/misread_kept_answer_rate": fmean(misread_keeps_answer(*p) for p in pairs)}


def _common_metrics(answers: list[Trajectory], train: list[Trajectory]) -> dict[str, float]:
    return {
        "solver/accuracy": fmean(a.meta["correct"] for a in answers) if answers else 0.0,
        "solver/reward": fmean(a.reward for a in answers) if answers else 0.0,
        "solver/response_len": fmean(len(a.response_ids) for a in answers) if answers else 0.0,
        "train/trajectories": float(len(train)),
    }


def _skip_to_block(generator: torch.Generator, rollouts: list[TaskRollout]) -> None:
    """Advance the step's generator past the Solver-group draws of the tasks before this block.

    `select_solver_groups` draws exactly K numbers per task whatever the rewards, so task i of the
    step uses draws [i K, (i + 1) K) of the step's stream: an engine that scores the block starting
    at task i0 skips i0 K draws and picks what one engine scoring the whole step would pick."""
    if not rollouts:
        return
    first, per_task = rollouts[0].index, len(rollouts[0].observer)
    if [r.index for r in rollouts] != list(range(first, first + len(rollouts))) or any(
            len(r.observer) != per_task for r in rollouts):
        raise ValueError("PRCO credit takes a contiguous block of the step's tasks with the same "
                         "number of captions each (`placement.deal`)")
    if first:
        torch.rand(first * per_task, generator=generator)  # the dtype the draws use


@dataclass
class PRCOCredit:
    """PRCO: Observer utility reward (shared=False) or the outcome-reward ablation (shared=True).

    r_O(c_k) = (1 - leak_k) * mean_g V(y_kg); shared: r_O(c_k) = mean_g r_S(y_kg), no leak term.
    A_O = r_O - mean over the task's captions. Solver group: one caption drawn uniformly among those
    whose G_S rewards are not all equal; A_S = r_S - mean over its answers; other answers only
    score captions. No std division unless `scale_by_std`.
    """

    leakage: LeakageFn
    generator: torch.Generator
    lam: float = 0.9
    shared: bool = False
    scale_by_std: bool = False

    def __call__(self, rollouts: list[TaskRollout]) -> Scored:
        _skip_to_block(self.generator, rollouts)
        captions = [c for r in rollouts for c in r.observer]
        leaks = self.leakage([r.task.question for r in rollouts for _ in r.observer],
                             [c.text for c in captions],
                             [r.task.answer for r in rollouts for _ in r.observer])
        train, answers, leak_iter = [], [], iter(leaks)
        for r in rollouts:
            grid = [solver_rewards(row, r.task, self.lam) for row in r.solver]  # [G_O][G_S]
            answers += [y for row in r.solver for y in row]
            task_leaks = [next(leak_iter) for _ in r.observer]
            correct = [[y.meta["correct"] for y in row] for row in r.solver]
            caption_rewards = (shared_outcome_observer_rewards(grid) if self.shared
                               else observer_utility_rewards(correct, task_leaks))
            for caption, leak, reward in zip(r.observer, task_leaks, caption_rewards):
                caption.meta["leak"], caption.reward = leak, reward
            train += r.observer
            pick = int(select_solver_groups(torch.tensor(grid, dtype=torch.float64), self.generator))
            if pick >= 0:
                train += r.solver[pick]
        _centre(train, self.scale_by_std)
        metrics = _common_metrics(answers, train)
        metrics["observer/reward"] = fmean(c.reward for c in captions) if captions else 0.0
        metrics["observer/leak_rate"] = fmean(leaks) if leaks else 0.0
        metrics["observer/caption_len"] = fmean(len(c.response_ids) for c in captions) if captions else 0.0
        metrics["solver/groups_selected"] = float(sum(t.role is Role.SOLVER for t in train))
        perceived = sum(len(r.observer) for r in rollouts if r.task.facts)
        return Scored(train, {**metrics, **_caption_metrics(rollouts)},
                      _weights(len(answers), len(captions), perceived), rollouts)


@dataclass
class SingleRoleCredit:
    """GRPO / DAPO on one "look and answer" trajectory per sample (`TaskRollout.single`).

    r = lam * V + (1 - lam) * F, plus DAPO's soft overlong penalty when `overlong` is set
    (`algo.overlong_penalty`); A = (r - mean) / (std + eps) per prompt group (`scale_by_std`), or
    r - mean. `dynamic_sampling`: groups whose rewards are all equal carry no signal and are
    dropped (DAPO), and `assign` may keep a subset of the informative ones (the batch's quota).
    """

    lam: float = 0.9
    dynamic_sampling: bool = False
    scale_by_std: bool = True
    overlong: tuple[int, int] | None = None
    """(max response tokens, buffer): the soft overlong penalty's L_max and L_cache; None = off."""

    def reward(self, rollouts: list[TaskRollout]) -> list[Trajectory]:
        """Set every answer's reward (in place); returns the answers in order."""
        answers = []
        for r in rollouts:
            solver_rewards(r.single, r.task, self.lam)
            answers += r.single
        if self.overlong is not None and answers:
            lengths = torch.tensor([len(a.response_ids) for a in answers])
            for a, p in zip(answers, overlong_penalty(lengths, *self.overlong).tolist()):
                a.meta["overlong_penalty"] = p
                a.reward += p
        return answers

    def informative_groups(self, answers: list[Trajectory]) -> list[int]:
        """Group ids among `answers` (rewards set) whose rewards are not all equal."""
        return _informative(answers)

    def assign(self, answers: list[Trajectory], keep_groups: set[int] | None = None) -> Scored:
        """Advantages of answers whose rewards are set; the trajectories that enter the loss
        (with dynamic sampling: the informative groups, only those in `keep_groups` if given)."""
        if not answers:
            return Scored([], _common_metrics([], []), _weights(0))
        rewards = torch.tensor([a.reward for a in answers], dtype=torch.float64)
        groups = torch.tensor([a.group_id for a in answers])
        _set_advantages(answers, grpo_advantages(rewards, groups, scale_by_std=self.scale_by_std))
        keep = _informative(answers) if self.dynamic_sampling else list(dict.fromkeys(
            a.group_id for a in answers))
        keep = set(keep) if keep_groups is None else set(keep) & keep_groups
        train = [a for a in answers if a.group_id in keep]
        return Scored(train, _common_metrics(answers, train), _weights(len(answers)))

    def __call__(self, rollouts: list[TaskRollout]) -> Scored:
        scored = self.assign(self.reward(rollouts))
        scored.rollouts = rollouts
        return scored


def _informative(answers: list[Trajectory]) -> list[int]:
    """Group ids (in order of first appearance) whose rewards are not all equal."""
    if not answers:
        return []
    rewards = torch.tensor([a.reward for a in answers], dtype=torch.float64)
    keep = dapo_keep_mask(rewards, torch.tensor([a.group_id for a in answers])).tolist()
    return list(dict.fromkeys(a.group_id for a, k in zip(answers, keep) if k))
