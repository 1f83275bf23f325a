"""Packing and the token-budget micro-batch planner: budgets hold, nothing is lost or duplicated,
and packed tensors line up with the trajectories they came from."""
from __future__ import annotations

import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prco_mega.learner.packing import (
    PAD_ROLE,
    pack_trajectories,
    padding_micro_batch,
    plan_and_pack,
    plan_micro_batches,
    step_denominators,
)
from prco_mega.types import Role, Trajectory


def _traj(role: Role, prompt: list[int], response: list[int], adv: float,
          group: int = 0) -> Trajectory:
    lp = [-0.1 * (k + 1) for k in range(len(response))]
    return Trajectory(role=role, task_uid="t", group_id=group, prompt_ids=prompt,
                      response_ids=response, rollout_logprobs=lp, advantage=adv)


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 64), min_size=1, max_size=80),
    budget=st.integers(64, 200),
    dp=st.integers(1, 4),
)
def test_plan_respects_budget_and_covers_every_sequence_once(lengths, budget, dp):
    if len(lengths) < dp:
        with pytest.raises(ValueError, match="cannot fill"):
            plan_micro_batches(lengths, budget, dp)
        return
    plan = plan_micro_batches(lengths, budget, dp)
    assert len(plan) == dp
    seen = sorted(i for rank in plan for mb in rank for i in mb)
    assert seen == list(range(len(lengths)))
    for rank in plan:
        assert rank, "every data-parallel rank needs a micro-batch"
        for mb in rank:
            assert mb and sum(lengths[i] for i in mb) <= budget


def test_plan_uses_few_micro_batches_and_balances_ranks():
    # 12 sequences of 50 tokens fit 2 per 100-token micro-batch: 6 micro-batches, 3 per rank.
    plan = plan_micro_batches([50] * 12, 100, 2)
    assert [len(r) for r in plan] == [3, 3]
    # Loads differ by at most one longest sequence between ranks.
    lengths = [97, 3, 60, 40, 55, 45, 70, 30, 20, 80]
    plan = plan_micro_batches(lengths, 100, 2)
    loads = [sum(lengths[i] for mb in r for i in mb) for r in plan]
    assert abs(loads[0] - loads[1]) <= max(lengths)
    assert len(plan[0]) == len(plan[1])


def test_plan_equalises_micro_batch_counts_across_ranks():
    # Rank loads: LPT gives one rank the 100 and the other the small ones; counts still match.
    plan = plan_micro_batches([100, 10, 10, 10, 10], 100, 2)
    assert len(plan[0]) == len(plan[1])


def test_plan_rejects_a_sequence_over_budget():
    with pytest.raises(ValueError, match=r"sequence 1 has 130 tokens.*budget \(128\)"):
        plan_micro_batches([10, 130], 128)


def test_planner_speed_at_100k():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(100, 4096, (100_000,), generator=g).tolist()
    t0 = time.perf_counter()
    plan = plan_micro_batches(lengths, 16384, 8)
    elapsed = time.perf_counter() - t0
    used = sum(len(r) for r in plan)
    assert used <= 1.05 * sum(lengths) / 16384 + 8  # near the lower bound on micro-batches
    assert elapsed < 5.0, f"planner took {elapsed:.2f} s for 100k sequences"


def test_pack_aligns_tokens_masks_logprobs_and_roles():
    a = _traj(Role.OBSERVER, [5, 6, 7], [8, 9], adv=0.5, group=3)
    b = _traj(Role.SOLVER, [1, 2], [3, 4, 5], adv=-1.0, group=4)
    den = step_denominators([a, b])
    assert den == {int(Role.OBSERVER): 2.0, int(Role.SOLVER): 3.0}
    batch = pack_trajectories([a, b], den)
    assert batch.tokens.tolist() == [5, 6, 7, 8, 9, 1, 2, 3, 4, 5]
    assert batch.cu_seqlens.tolist() == [0, 5, 10]
    assert batch.loss_mask.tolist() == [0, 0, 0, 1, 1, 0, 0, 1, 1, 1]
    assert batch.advantages.tolist() == [0, 0, 0, 0.5, 0.5, 0, 0, -1, -1, -1]
    assert batch.old_logprobs[3:5].tolist() == pytest.approx([-0.1, -0.2])
    assert batch.old_logprobs[7:10].tolist() == pytest.approx([-0.1, -0.2, -0.3])
    assert batch.role_ids.tolist() == [0] * 5 + [1] * 5
    assert batch.position_ids.shape == (3, 10)
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    assert batch.seq_group_ids.tolist() == [3, 4]
    assert batch.role_denominators[Role.SOLVER] == 3.0


def test_pack_pads_to_a_multiple_with_a_lossless_segment():
    a = _traj(Role.SOLVER, [1, 2, 3], [4, 5], adv=1.0)
    batch = pack_trajectories([a], step_denominators([a]), pad_to_multiple=4, pad_token_id=0)
    assert batch.num_tokens == 8
    assert batch.cu_seqlens.tolist() == [0, 5, 8]
    assert batch.loss_mask[5:].sum() == 0
    assert batch.role_ids[5:].tolist() == [PAD_ROLE] * 3


def test_padding_micro_batch_carries_no_loss():
    a = _traj(Role.SOLVER, [1, 2, 3], [4, 5], adv=1.0)
    blank = padding_micro_batch(pack_trajectories([a], step_denominators([a])), 6)
    assert blank.num_tokens == 6 and blank.cu_seqlens.tolist() == [0, 6]
    assert blank.loss_mask.sum() == 0 and blank.role_ids.tolist() == [PAD_ROLE] * 6
    assert blank.position_ids.shape == (3, 6) and blank.role_denominators == {Role.SOLVER: 2.0}


def test_plan_and_pack_splits_a_step_with_global_denominators():
    trajs = [_traj(Role(k % 2), [1] * (2 + k), [2] * (1 + k % 3), adv=float(k)) for k in range(9)]
    den = step_denominators(trajs)
    per_rank = [plan_and_pack(trajs, token_budget=16, dp_size=2, dp_rank=r) for r in range(2)]
    batches = per_rank[0] + per_rank[1]
    assert all(b.num_tokens <= 16 for b in batches)
    assert all(b.role_denominators == den for b in batches)
    # Every response token of the step is in exactly one micro-batch.
    assert sum(float(b.loss_mask.sum()) for b in batches) == sum(den.values())
    total_adv = sum(t.advantage * len(t.response_ids) for t in trajs)
    assert sum(float(b.advantages.sum()) for b in batches) == pytest.approx(total_adv)


def test_pack_rejects_mismatched_rollout_logprobs():
    bad = Trajectory(role=Role.SOLVER, task_uid="t", group_id=0, prompt_ids=[1],
                     response_ids=[2, 3], rollout_logprobs=[-0.5])
    with pytest.raises(ValueError, match="1 rollout log-probs for 2 response tokens"):
        pack_trajectories([bad], {1: 2.0})
