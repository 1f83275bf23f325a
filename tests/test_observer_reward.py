"""Role rewards: r_S = lam V + (1 - lam) F, r_O = (1 - leak) mean_g V, and the shared ablation."""
from __future__ import annotations

import pytest

from prco_mega.rewards.observer import (
    observer_utility_rewards,
    shared_outcome_observer_rewards,
    solver_reward,
)


@pytest.mark.parametrize("v, f, lam, expected", [
    (1.0, 1.0, 0.9, 1.0),
    (1.0, 0.0, 0.9, 0.9),
    (0.0, 1.0, 0.9, 0.1),
    (0.0, 0.5, 0.9, 0.05),
    (1.0, 0.4, 0.5, 0.7),
    (0.0, 1.0, 1.0, 0.0),
])
def test_solver_reward_hand_cases(v, f, lam, expected):
    assert solver_reward(v, f, lam) == pytest.approx(expected)


def test_solver_reward_default_lambda_is_point_nine():
    assert solver_reward(1.0, 0.0) == pytest.approx(0.9)


@pytest.mark.parametrize("lam", [-0.1, 1.5])
def test_solver_reward_rejects_lambda_outside_unit_interval(lam):
    with pytest.raises(ValueError, match="lam"):
        solver_reward(1.0, 1.0, lam)


def test_observer_utility_is_success_rate_zeroed_by_leak():
    solver_correct = [
        [1.0, 0.0, 1.0, 1.0],  # 3/4 correct, no leak
        [1.0, 1.0, 1.0, 1.0],  # all correct, but the caption leaks
        [0.0, 0.0, 0.0, 0.0],  # none correct
        [0.0, 1.0, 0.0, 0.0],  # 1/4
    ]
    leaks = [0, 1, 0, 0]
    assert observer_utility_rewards(solver_correct, leaks) == pytest.approx([0.75, 0.0, 0.0, 0.25])


def test_observer_utility_single_answer_per_caption():
    assert observer_utility_rewards([[1.0], [0.0]], [0, 0]) == [1.0, 0.0]


def test_observer_utility_validates_shapes():
    with pytest.raises(ValueError, match="leaks"):
        observer_utility_rewards([[1.0], [0.0]], [0])
    with pytest.raises(ValueError, match="empty"):
        observer_utility_rewards([[1.0], []], [0, 0])
    with pytest.raises(ValueError, match="0 or 1"):
        observer_utility_rewards([[1.0]], [2])


def test_shared_outcome_reward_is_mean_solver_reward_without_leak_term():
    # r_S values of 2 captions x 3 answers, e.g. lam=0.9: correct+formatted=1.0, wrong+formatted=0.1
    solver_rewards = [[1.0, 0.1, 0.1], [0.9, 0.9, 0.0]]
    assert shared_outcome_observer_rewards(solver_rewards) == pytest.approx([0.4, 0.6])


def test_shared_outcome_reward_can_keep_the_leak_penalty():
    solver_rewards = [[1.0, 0.1, 0.1], [0.9, 0.9, 0.0]]
    rewards = shared_outcome_observer_rewards(solver_rewards, leaks=[1, 0])
    assert rewards == pytest.approx([0.0, 0.6])


def test_shared_and_utility_rewards_agree_when_format_weight_is_zero_and_nothing_leaks():
    verdicts = [[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]
    r_s = [[solver_reward(v, 0.3, lam=1.0) for v in row] for row in verdicts]
    assert shared_outcome_observer_rewards(r_s) == pytest.approx(
        observer_utility_rewards(verdicts, [0, 0, 0]))
