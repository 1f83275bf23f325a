"""Per-role group advantages, token broadcast, and the GRPO/DAPO baseline advantages."""
import math

import pytest
import torch

from prco_mega.algo import (
    broadcast_to_tokens,
    dapo_keep_mask,
    group_advantages,
    grpo_advantages,
    overlong_penalty,
)
from prco_mega.types import Role

O, S = int(Role.OBSERVER), int(Role.SOLVER)


def test_group_advantages_hand_case_centres_each_group_and_role_separately():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.3, 0.7, 1.0], dtype=torch.float64)
    groups = torch.tensor([7, 7, 7, 7, 7, 7, 2, 2])
    roles = torch.tensor([S, S, S, S, O, O, S, S])
    # (7, S): mean 0.5 -> +-0.5.  (7, O): same group id, other role, mean 0.4 -> +-0.1.
    # (2, S): mean 0.85 -> -0.15, +0.15.
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, 0.1, -0.1, -0.15, 0.15], dtype=torch.float64)
    torch.testing.assert_close(group_advantages(rewards, groups, roles), expected)


def test_group_advantages_std_scaling_hand_case():
    rewards = torch.tensor([0.0, 1.0, 2.0, 3.0, 3.0], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 1, 1])
    roles = torch.zeros(5, dtype=torch.int64)
    # Group 0: mean 1, population var (1 + 0 + 1) / 3 = 2/3, so A = -+sqrt(3/2), 0.
    # Group 1: all equal -> centred 0, std 0, stays 0 (no division blow-up thanks to eps).
    s = math.sqrt(1.5)
    out = group_advantages(rewards, groups, roles, scale_by_std=True, eps=0.0)
    torch.testing.assert_close(out[:3], torch.tensor([-s, 0.0, s], dtype=torch.float64))
    out_eps = group_advantages(rewards, groups, roles, scale_by_std=True, eps=1e-6)
    assert torch.equal(out_eps[3:], torch.zeros(2, dtype=torch.float64))
    # eps enters as (std + eps): 1 / (sqrt(2/3) + 1e-6).
    torch.testing.assert_close(out_eps[2], torch.tensor(1.0 / (math.sqrt(2 / 3) + 1e-6), dtype=torch.float64))


def _random_batch(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.rand(n, generator=g, dtype=torch.float64)
    groups = torch.randint(0, 6, (n,), generator=g) * 13 + 1000  # sparse, unsorted ids
    roles = torch.randint(0, 2, (n,), generator=g)
    return rewards, groups, roles


@pytest.mark.parametrize("scale_by_std", [False, True])
def test_advantages_sum_to_zero_in_every_group_and_role(scale_by_std):
    rewards, groups, roles = _random_batch()
    adv = group_advantages(rewards, groups, roles, scale_by_std=scale_by_std)
    for gid in groups.unique():
        for rid in roles.unique():
            seg = (groups == gid) & (roles == rid)
            if seg.any():
                assert abs(float(adv[seg].sum())) < 1e-12
                if scale_by_std and seg.sum() > 1:  # unit population std after scaling
                    assert abs(float(adv[seg].std(unbiased=False)) - 1.0) < 1e-4


def test_advantages_do_not_depend_on_group_labels_or_row_order():
    rewards, groups, roles = _random_batch(seed=1)
    adv = group_advantages(rewards, groups, roles, scale_by_std=True)
    perm = torch.randperm(rewards.numel(), generator=torch.Generator().manual_seed(2))
    relabel = {int(v): 10_000 - 7 * i for i, v in enumerate(groups.unique())}
    new_groups = torch.tensor([relabel[int(v)] for v in groups])
    adv_perm = group_advantages(rewards[perm], new_groups[perm], roles[perm], scale_by_std=True)
    torch.testing.assert_close(adv_perm, adv[perm])


def test_group_advantages_matches_a_loop_over_groups():
    rewards, groups, roles = _random_batch(seed=3)
    adv = group_advantages(rewards, groups, roles)
    for i in range(rewards.numel()):
        seg = (groups == groups[i]) & (roles == roles[i])
        assert abs(float(adv[i] - (rewards[i] - rewards[seg].mean()))) < 1e-12


def test_group_advantages_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same length"):
        group_advantages(torch.zeros(3), torch.zeros(4, dtype=torch.int64), torch.zeros(3, dtype=torch.int64))


def test_broadcast_to_tokens_hand_case():
    values = torch.tensor([2.0, -1.0, 0.5])
    cu_seqlens = torch.tensor([0, 3, 5, 9], dtype=torch.int32)
    mask = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1], dtype=torch.float32)
    expected = torch.tensor([0, 2, 2, 0, -1, 0, 0, 0.5, 0.5])
    assert torch.equal(broadcast_to_tokens(values, cu_seqlens, mask), expected)


def test_broadcast_to_tokens_rejects_wrong_cu_seqlens():
    with pytest.raises(ValueError, match="cu_seqlens"):
        broadcast_to_tokens(torch.zeros(3), torch.tensor([0, 2, 4]), torch.ones(4))


def test_grpo_advantages_hand_case():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.2, 0.2], dtype=torch.float64)
    groups = torch.tensor([5, 5, 9, 9, 3, 3])
    # Groups 5 and 9: mean 0.5, std 0.5 -> +-0.5 / (0.5 + eps). Group 3: all equal -> 0.
    a = 0.5 / (0.5 + 1e-6)
    expected = torch.tensor([a, -a, a, -a, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(grpo_advantages(rewards, groups), expected)
    torch.testing.assert_close(
        grpo_advantages(rewards, groups, scale_by_std=False),
        torch.tensor([0.5, -0.5, 0.5, -0.5, 0.0, 0.0], dtype=torch.float64),
    )


def test_dapo_keep_mask_drops_exactly_the_groups_with_equal_rewards():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.1, 0.1, 0.1])
    groups = torch.tensor([4, 4, 8, 8, 2, 2, 6, 6, 6])
    # Group 4 all 1, group 2 all 0, group 6 all 0.1: dropped. Group 8 mixed: kept.
    expected = torch.tensor([False, False, True, True, False, False, False, False, False])
    assert torch.equal(dapo_keep_mask(rewards, groups), expected)


def test_overlong_penalty_hand_case():
    lengths = torch.tensor([10, 12, 14, 16, 20])
    # max 16, cache 4: free up to 12, then -(L - 12) / 4, -1 beyond 16.
    expected = torch.tensor([0.0, 0.0, -0.5, -1.0, -1.0])
    assert torch.equal(overlong_penalty(lengths, max_length=16, cache_length=4), expected)
    with pytest.raises(ValueError, match="cache_length"):
        overlong_penalty(lengths, max_length=4, cache_length=8)
