"""The single-role rollout of the GRPO/DAPO baselines: one "look and answer" group per task.

Same engine, prompts and trajectory fields as the two-stage rollout, without roles: each task's
single prompt (image + question) is sampled `sampling.n` times in one engine call for the batch,
and the samples form the task's advantage group. Result: `TaskRollout(task, single=[G answers])`,
which `algo.credit.SingleRoleCredit` scores. `draw` numbers the extra batches of DAPO's dynamic
sampling within a step, so each draws with its own seeds.
"""
from __future__ import annotations


from prco_mega.roles.prompts import PromptSet
from prco_mega.rollout.engine import RolloutEngine, SamplingSettings
from prco_mega.rollout.two_stage import require_logprobs, sample_groups
from prco_mega.types import Role, Task, TaskRollout


class SingleRoleRollout:
    """Baseline rollout: G = `sampling.n` look-and-answer trajectories per task."""

    def __init__(self, engine: RolloutEngine, prompts: PromptSet, sampling: SamplingSettings):
        require_logprobs(sampling=sampling)
        self.engine = engine
        self.prompts = prompts
        self.sampling = sampling

    def __call__(self, tasks: list[Task], step: int, policy_version: int, offset: int = 0,
                 draw: int = 0) -> list[TaskRollout]:
        """Task i is the step's task `offset + i` of batch `draw`."""
        prompts = [self.prompts.single(t) for t in tasks]
        keys = range(offset, offset + len(tasks))
        answers = sample_groups(self.engine, tasks, prompts, self.sampling, Role.SINGLE,
                                keys, step, policy_version, draw=draw)
        return [TaskRollout(task=t, single=a, index=k, draw=draw)
                for t, a, k in zip(tasks, answers, keys)]
