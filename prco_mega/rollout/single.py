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
from prco_mega.rollout.two_stage import require_logprobs, sample_groups
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
        answers = sample_groups(self.engine, tasks, prompts, self.sampling, Role.SINGLE,
                                self._groups, step, policy_version)
        return [TaskRollout(task=t, observer=[], solver=[a]) for t, a in zip(tasks, answers)]
