"""A scored PRCO step without an engine: synthetic polygon tasks, Observer captions written by the
warm start's imperfect demonstrator (facts dropped and misread), one caption per task that gives
the answer away, and Solver answers that compute from each caption (or from their own reading
of the image, as a Solver that sees it may); scored by the real
`PRCOCredit` (utility rewards, leak check, advantages, Solver-group draw)."""
from __future__ import annotations

import random

import torch

from prco_mega.tiny.demos import DemoNoise, observer_demo, perceived_facts, solver_demo
from prco_mega.data.synthetic import SyntheticConfig, SyntheticTaskSource
from prco_mega.rewards.leakage import RuleLeakageChecker
from prco_mega.algo.credit import PRCOCredit, Scored
from prco_mega.types import Role, Task, TaskRollout, Trajectory

NOISE = DemoNoise(drop=0.15, corrupt=0.3)


def step_tasks(n: int, seed: int = 5) -> list[Task]:
    source = SyntheticTaskSource(SyntheticConfig(seed=seed, family_weights={"polygons": 1.0}))
    return [source.task(i) for i in range(n)]


def _traj(role: Role, task: Task, group: int, text: str, caption: int | None = None):
    ids = list(range(len(text.split())))
    return Trajectory(role=role, task_uid=task.uid, group_id=group, prompt_ids=[1, 2],
                      response_ids=ids, rollout_logprobs=[-1.0] * len(ids), text=text,
                      caption_index=caption, images=list(task.images))


def task_rollout(task: Task, index: int, g_o: int, g_s: int, step: int) -> TaskRollout:
    """Task `index` of the step: `g_o` captions (the last one leaks the answer on every third
    task), `g_s` answers per caption; seeded by (step, index) whatever the split."""
    rng = random.Random(step * 1000 + index)
    r = TaskRollout(task=task, index=index)
    for k in range(g_o):
        seen = perceived_facts(task.facts, rng, NOISE)
        text = observer_demo(task, seen)
        if k == g_o - 1 and index % 3 == 0:
            text += f"\nSo the answer is {task.answer}."
        r.observer.append(_traj(Role.OBSERVER, task, 100 * index, text))
        # after the warm-up the Solver sees the image too: some answers read it afresh
        reads = [seen if rng.random() < 0.6 else perceived_facts(task.facts, rng, NOISE)
                 for _ in range(g_s)]
        r.solver.append([_traj(Role.SOLVER, task, 100 * index + 1 + k,
                               solver_demo(task, read, rng), caption=k) for read in reads])
    return r


def scored_block(tasks: list[Task], block: range, *, g_o: int = 4, g_s: int = 3,
                 step: int = 0, seed: int = 7) -> Scored:
    """The engine's block of a step, scored as the run scores it (the generator seeded per step,
    as `runtime.samplers.OneDraw` does)."""
    rollouts = [task_rollout(tasks[i], i, g_o, g_s, step) for i in block]
    generator = torch.Generator().manual_seed(seed + step)
    return PRCOCredit(RuleLeakageChecker(), generator)(rollouts)
