"""The single-role rollout of the GRPO/DAPO baselines: one "look and answer" group per task.

Same engine, prompts and trajectory fields as the two-stage rollout, without roles: each task's
single prompt (image + question) is sampled `sampling.n` times in one engine call for the batch,
and the samples form the task's advantage group. Result: `TaskRollout(task, observer=[],
solver=[[G answers]])`, which `scoring.SingleRoleCredit` scores.
"""
from __future__ import annotations

import itertools

from prco_mega.roles.prompts import PromptSet
from prco_mega.rollout.engine import RolloutEngine, SamplingSettings
from prco_mega.rollout.two_stage import require_logprobs, request_of, step_settings, trajectory_of
from prco_mega.scoring import TaskRollout
from prco_mega.types import Role, Task


class SingleRoleRollout:
    """Baseline rollout: G = `sampling.n` look-and-answer trajectories per task."""

    def __init__(self, engine: RolloutEngine, prompts: PromptSet, sampling: SamplingSettings):
        require_logprobs(sampling=sampling)
        self.engine = engine
        self.prompts = prompts
        self.sampling = sampling
        self._groups = itertools.count()

    def __call__(self, tasks: list[Task], step: int, policy_version: int) -> list[TaskRollout]:
        prompts = [self.prompts.single(t) for t in tasks]
        samples = self.engine.generate([request_of(p) for p in prompts],
                                       step_settings(self.sampling, step))
        rollouts = []
        for task, prompt, gens in zip(tasks, prompts, samples, strict=True):
            group = next(self._groups)
            answers = [trajectory_of(g, Role.SINGLE, task, group, policy_version, step,
                                     prompt.images) for g in gens]
            rollouts.append(TaskRollout(task=task, observer=[], solver=[answers]))
        return rollouts
