"""The algorithm registry: each entry's preset as published, config keys over presets, DAPO's
dynamic sampling refill and its bound, and the resolved clip reaching the loss."""
from __future__ import annotations

import pytest
import torch

from prco_mega.algo import registry as algorithms
from prco_mega.runtime import samplers

from prco_mega.runtime import build
from prco_mega.algo.losses import prco_loss
from prco_mega.config import RunConfig, from_dict
from prco_mega.data.stream import TaskStream
from prco_mega.algo.credit import SingleRoleCredit
from prco_mega.rollout.placement import single_engine
from prco_mega.rollout.two_stage import group_id
from prco_mega.tracking.timing import PhaseTimer
from prco_mega.types import Role, Task, TaskRollout, Trajectory

RIGHT, WRONG = "<think>x</think> \\boxed{3}", "<think>x</think> \\boxed{4}"


def _cfg(**algo) -> RunConfig:
    return from_dict(RunConfig, {"algo": algo, "solver": {"max_new_tokens": 50}})


def test_presets_are_the_published_algorithms():
    dapo = build.resolved_algo(_cfg(name="dapo"))
    assert (dapo.clip_low, dapo.clip_high, dapo.level, dapo.scale_by_std) == (0.2, 0.28, "token", True)
    assert dapo.dynamic_sampling and dapo.overlong_buffer == 10  # a fifth of max_new_tokens
    grpo = build.resolved_algo(_cfg(name="grpo"))
    assert (grpo.clip_low, grpo.clip_high, grpo.level, grpo.scale_by_std) == (0.2, 0.2, "sequence", True)
    assert not grpo.dynamic_sampling and grpo.overlong_buffer == 0
    prco = build.resolved_algo(_cfg(name="prco"))
    assert (prco.clip_high, prco.level, prco.scale_by_std, prco.dynamic_sampling) == (0.28, "token", False, False)
    assert {algorithms.REGISTRY[n].eval_mode for n in ("grpo", "dapo")} == {"single"}
    assert {algorithms.REGISTRY[n].eval_mode for n in ("prco", "prco_shared")} == {"prco"}


def test_config_keys_override_any_preset_field():
    out = build.resolved_algo(_cfg(name="dapo", clip_high=0.3, level="sequence", overlong_buffer=0,
                                   max_extra_draws=1))
    assert (out.clip_high, out.level, out.overlong_buffer, out.max_extra_draws) == (0.3, "sequence", 0, 1)
    assert build.resolved_config(_cfg(name="dapo"), out)["algo_resolved"]["clip_high"] == 0.3


def test_bad_preset_overrides_are_refused_by_name():
    with pytest.raises(ValueError, match=r"algo.overlong_buffer \(60\) must be <= solver.max_new_tokens \(50\)"):
        build.resolved_algo(_cfg(name="dapo", overlong_buffer=60))
    with pytest.raises(ValueError, match="dynamic_sampling is for the single-role baselines"):
        build.resolved_algo(_cfg(name="prco", dynamic_sampling=True))
    with pytest.raises(ValueError, match=r"max_extra_draws \(16\) must be <= 15"):
        build.resolved_algo(_cfg(name="dapo", max_extra_draws=16))


def test_dapo_clip_high_reaches_the_loss():
    settings = build.loss_settings(_cfg(name="dapo"), build.resolved_algo(_cfg(name="dapo")))
    # one token with ratio 1.5 and advantage +1: the surrogate is clipped at 1 + clip_high
    lp, old = torch.tensor([0.0, 0.0]), torch.tensor([0.0, -torch.log(torch.tensor(1.5))])
    loss, _ = prco_loss(lp, old, torch.ones(2), torch.tensor([0.0, 1.0]),
                        torch.full((2,), int(Role.SINGLE)), {int(Role.SINGLE): 1.0},
                        clip_low=settings.clip_low, clip_high=settings.clip_high)
    assert float(loss) == pytest.approx(-1.28)


# ----------------------------------------------------------------------------- dynamic sampling
class _ScriptedRollout:
    """Stands in for the rollout (the engine's samples): task i's G answers are all right when
    i is in `uniform`, else one right and one wrong. Records each call's draw index."""

    def __init__(self, uniform: set[int]):
        self.uniform, self.draws, self.groups = uniform, [], 0

    def __call__(self, tasks, step, policy_version, offset=0, draw=0):
        self.draws.append(draw)
        out = []
        for i, task in enumerate(tasks):
            texts = [RIGHT, RIGHT] if int(task.uid) in self.uniform else [RIGHT, WRONG]
            group = group_id(step, draw, False, offset + i)
            out.append(TaskRollout(task, single=[
                Trajectory(role=Role.SINGLE, task_uid=task.uid, group_id=group,
                           prompt_ids=[1], response_ids=[2], rollout_logprobs=[-1.0], text=t,
                           policy_version=policy_version) for t in texts], index=offset + i,
                draw=draw))
        return out


def _stream(batch: int) -> TaskStream:
    return TaskStream(lambda i: Task(uid=str(i), question="q", answer="3"), batch)


def test_refill_draws_more_prompts_until_the_batch_is_full():
    rollout = _ScriptedRollout(uniform=set(range(0, 6)))  # the first 6 tasks carry no signal
    sample = samplers.DynamicSampling(rollout, SingleRoleCredit(dynamic_sampling=True),
                                        target=4, max_extra_draws=4, shard=single_engine())
    stream = _stream(4)
    scored = sample(stream, step=3, timer=PhaseTimer())
    # draws: tasks 0-3 (none informative), 4-7 (6, 7), 8-11 (8, 9 fill the batch)
    assert rollout.draws == [0, 1, 2]
    assert sorted({t.task_uid for t in scored.train}) == ["6", "7", "8", "9"]
    assert scored.metrics["sampling/draws"] == 3.0 and scored.metrics["sampling/prompts"] == 12.0
    assert scored.metrics["sampling/groups_found"] == 6.0
    assert scored.metrics["sampling/groups_trained"] == 4.0
    assert stream.position == 12


def test_refill_stops_at_its_bound_with_a_short_batch():
    rollout = _ScriptedRollout(uniform=set(range(100)))  # nothing ever has signal
    sample = samplers.DynamicSampling(rollout, SingleRoleCredit(dynamic_sampling=True),
                                        target=4, max_extra_draws=2, shard=single_engine())
    scored = sample(_stream(4), step=0, timer=PhaseTimer())
    assert rollout.draws == [0, 1, 2]  # the first draw and two extra
    assert scored.train == [] and scored.metrics["sampling/groups_trained"] == 0.0
    assert scored.metrics["solver/accuracy"] == 1.0  # every sampled answer still counts


def test_separate_rollout_placement_is_refused_by_the_run_not_run_colocated():
    cfg = from_dict(RunConfig, {"cluster": {"rollout_placement": "separate", "rollout_nodes": 1}})
    with pytest.raises(ValueError, match="rollout_placement 'separate': only the engine ranks"):
        build.shard_of(cfg)
    assert build.shard_of(_cfg()).placement.num_engines == 1  # a world of one: one engine
