"""PRCO's Solver-group selection: one caption with reward variance > 0, uniformly, seeded."""
import pytest
import torch

from prco_mega.algo import has_signal, select_solver_groups, select_solver_groups_batched


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_hand_case_picks_only_captions_with_mixed_rewards():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    picks = {int(select_solver_groups(rewards, _gen(seed))) for seed in range(50)}
    assert picks == {1, 3}


def test_no_caption_with_signal_gives_minus_one():
    rewards = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.9, 0.9]])
    out = select_solver_groups(rewards, _gen(0))
    assert out.dtype == torch.int64 and out.shape == () and int(out) == -1


def test_equal_rewards_with_float_rounding_count_as_no_signal():
    # The two-pass float64 variance of [0.1, 0.1, 0.1] is ~2e-34, not 0 (a kernel computing it that
    # way would see signal); such a caption has none.
    rewards = torch.tensor([[0.1, 0.1, 0.1], [0.0, 0.9, 0.0]], dtype=torch.float64)
    assert rewards[0].var(unbiased=False) > 0  # the trap this test is about
    assert has_signal(rewards).tolist() == [False, True]
    assert {int(select_solver_groups(rewards, _gen(s))) for s in range(20)} == {1}


def test_never_picks_a_zero_variance_caption_on_random_prompts():
    g = _gen(123)
    # Binary rewards, 2 answers per caption: half the captions, and 1/16 of the prompts, have none.
    rewards = torch.randint(0, 2, (500, 4, 2), generator=g).to(torch.float32)
    picks = select_solver_groups_batched(rewards, _gen(7))
    valid = has_signal(rewards)
    for p in range(rewards.shape[0]):
        if valid[p].any():
            assert picks[p] >= 0 and valid[p, picks[p]]
        else:
            assert picks[p] == -1
    assert (picks == -1).any() and (picks >= 0).any()  # both cases occurred


def test_selection_is_reproducible_by_seed():
    rewards = torch.randint(0, 2, (64, 5, 4), generator=_gen(1)).to(torch.float32)
    a = select_solver_groups_batched(rewards, _gen(42))
    b = select_solver_groups_batched(rewards, _gen(42))
    c = select_solver_groups_batched(rewards, _gen(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    single = torch.tensor([int(select_solver_groups(rewards[0], _gen(s))) for s in range(10)])
    again = torch.tensor([int(select_solver_groups(rewards[0], _gen(s))) for s in range(10)])
    assert torch.equal(single, again)


def _chi_square(counts, expected):
    return float(((counts - expected) ** 2 / expected).sum())


def test_selection_is_uniform_over_the_captions_with_signal():
    # Captions 0, 2, 3, 5 have signal; 1 and 4 do not.
    one = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.2, 0.9], [1.0, 0.0], [0.0, 0.0], [0.5, 0.4]])
    draws = 4000
    picks = select_solver_groups_batched(one.expand(draws, -1, -1), _gen(2024))
    counts = torch.bincount(picks, minlength=6).to(torch.float64)
    assert counts[1] == 0 and counts[4] == 0
    # 3 degrees of freedom: P(chi2 > 16.27) = 0.001 under uniformity.
    assert _chi_square(counts[[0, 2, 3, 5]], draws / 4) < 16.27
    # The single-prompt entry point, drawing from one generator call after call.
    g = _gen(99)
    singles = torch.tensor([int(select_solver_groups(one, g)) for _ in range(800)])
    counts1 = torch.bincount(singles, minlength=6).to(torch.float64)
    assert counts1[1] == 0 and counts1[4] == 0
    assert _chi_square(counts1[[0, 2, 3, 5]], 800 / 4) < 16.27


def test_selection_rejects_wrong_ranks():
    with pytest.raises(ValueError, match="K, G_S"):
        select_solver_groups(torch.zeros(2, 3, 4), _gen(0))
    with pytest.raises(ValueError, match="P, K, G_S"):
        select_solver_groups_batched(torch.zeros(2, 3), _gen(0))
