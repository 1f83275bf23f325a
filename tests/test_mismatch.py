"""Train/rollout mismatch report (`learner.mismatch`) against hand-computed values."""
import math

import pytest
import torch

from prco_mega.learner.mismatch import logprob_mismatch, mismatch_kl_k3
from prco_mega.types import Role

# token:         0 (prompt)  1 (obs)  2 (solver) 3 (solver) 4 (masked, NaN learner)
LEARNER = torch.tensor([-1.0, -2.0, -0.5, -3.0, math.nan])
ROLLOUT = torch.tensor([-1.1, -2.0, -0.7, -2.0, -1.0])
MASK = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0])
ROLES = torch.tensor([0, 0, 1, 1, 1], dtype=torch.int8)


def test_mean_and_max_absolute_difference_per_role():
    m = logprob_mismatch(LEARNER, ROLLOUT, MASK, ROLES)
    # observer: token 1 only, |−2 − (−2)| = 0; solver: tokens 2, 3: 0.2 and 1.0
    assert float(m["mismatch/observer/mean_abs"]) == 0.0
    assert float(m["mismatch/observer/tokens"]) == 1.0
    assert float(m["mismatch/solver/mean_abs"]) == pytest.approx(0.6)
    assert float(m["mismatch/solver/max_abs"]) == pytest.approx(1.0)
    assert float(m["mismatch/solver/tokens"]) == 2.0
    assert float(m["mismatch/mean_abs"]) == pytest.approx(1.2 / 3)
    assert float(m["mismatch/max_abs"]) == pytest.approx(1.0)


def test_token_level_kl_k3_is_hand_computed_and_ignores_masked_nan():
    m = logprob_mismatch(LEARNER, ROLLOUT, MASK, ROLES)
    # log rho = learner - rollout: 0, 0.2, -1  ->  rho - 1 - log rho
    expected = (0.0 + (math.exp(0.2) - 1.2) + math.exp(-1.0)) / 3
    assert float(m["mismatch/kl_k3"]) == pytest.approx(expected, rel=1e-6)
    assert all(math.isfinite(float(v)) for v in m.values())


def test_k3_is_zero_for_equal_logprobs_and_positive_otherwise():
    lp = torch.tensor([-0.3, -5.0, -1e-6])
    assert torch.equal(mismatch_kl_k3(lp, lp), torch.zeros(3))
    assert (mismatch_kl_k3(lp, lp + 1e-3) > 0).all()


def test_role_without_loss_tokens_gets_no_keys():
    m = logprob_mismatch(LEARNER, ROLLOUT, MASK, torch.full((5,), int(Role.SOLVER)))
    assert not any("observer" in k for k in m)
    assert logprob_mismatch(LEARNER, ROLLOUT, torch.zeros(5), ROLES) == {}


def test_misaligned_inputs_are_refused():
    with pytest.raises(ValueError, match=r"same shape"):
        logprob_mismatch(LEARNER, ROLLOUT[:4], MASK, ROLES)
    with pytest.raises(ValueError, match=r"loss_mask has shape \(4,\)"):
        logprob_mismatch(LEARNER, ROLLOUT, MASK[:4], ROLES)


def test_sums_over_micro_batches_finish_to_the_whole_steps_means():
    """What the learner does: additive statistics per micro-batch (the same keys in each, no host
    sync), summed (max for max_abs), then finished, equal the statistics of the whole step."""
    from prco_mega.learner.mismatch import finish_mismatch, mismatch_sums

    g = torch.Generator().manual_seed(3)
    learner, rollout = -torch.rand(40, generator=g), -torch.rand(40, generator=g)
    mask = (torch.rand(40, generator=g) > 0.3).float()
    roles = (torch.rand(40, generator=g) > 0.5).to(torch.int8)
    parts = [mismatch_sums(learner[a:b], rollout[a:b], mask[a:b], roles[a:b], [0, 1])
             for a, b in ((0, 7), (7, 25), (25, 40))]
    reduced = {k: float(max(p[k] for p in parts) if k.endswith("max_abs") else sum(p[k] for p in parts))
               for k in parts[0]}
    whole = logprob_mismatch(learner, rollout, mask, roles)
    assert finish_mismatch(reduced).keys() == whole.keys()
    for key, value in finish_mismatch(reduced).items():
        assert value == pytest.approx(whole[key], rel=1e-6), key


def test_probability_error_and_kl_per_role_are_hand_computed():
    m = logprob_mismatch(LEARNER, ROLLOUT, MASK, ROLES)
    # solver tokens 2, 3: |e^-0.5 - e^-0.7| and |e^-3 - e^-2|
    err = (abs(math.exp(-0.5) - math.exp(-0.7)) + abs(math.exp(-3.0) - math.exp(-2.0))) / 2
    assert m["mismatch/solver/prob_err"] == pytest.approx(err, rel=1e-6)
    assert m["mismatch/observer/prob_err"] == 0.0
    assert m["mismatch/solver/kl_k3"] == pytest.approx(
        ((math.exp(0.2) - 1.2) + math.exp(-1.0)) / 2, rel=1e-6)


def test_token_kinds_follow_the_image_token_of_each_sequence():
    """A token is "image" when its sequence holds the image placeholder; the statistics split by
    role and kind add up to the role's."""
    from prco_mega.learner.mismatch import finish_mismatch, image_sequence_tokens, mismatch_sums

    IMG = 99
    cu = torch.tensor([0, 4, 7, 10], dtype=torch.int32)
    tokens = torch.tensor([5, IMG, IMG, 6, 5, 7, 8, 1, IMG, 3])
    image_T = image_sequence_tokens(tokens, cu, IMG)
    assert image_T.tolist() == [True] * 4 + [False] * 3 + [True] * 3
    learner = torch.tensor([0.0, -1.0, -1.0, -0.5, 0.0, -0.2, -0.4, 0.0, -1.0, -0.1])
    rollout = learner - torch.tensor([0, 0, 0, 0.1, 0, 0.2, -0.3, 0, 0, 0.05])
    mask = torch.tensor([0, 0, 0, 1, 0, 1, 1, 0, 0, 1], dtype=torch.float32)
    roles = torch.tensor([1] * 7 + [0] * 3, dtype=torch.int8)
    m = finish_mismatch({k: float(v) for k, v in mismatch_sums(
        learner, rollout, mask, roles, [0, 1], image_T=image_T).items()})
    assert m["mismatch/solver/image/mean_abs"] == pytest.approx(0.1)
    assert m["mismatch/solver/text/mean_abs"] == pytest.approx(0.25)
    assert m["mismatch/solver/text/tokens"] == 2.0
    assert m["mismatch/image/tokens"] == 2.0 and m["mismatch/text/max_abs"] == pytest.approx(0.3)
    assert "mismatch/observer/text/tokens" not in m  # no observer text token: dropped
    assert m["mismatch/solver/mean_abs"] == pytest.approx((0.1 + 0.2 + 0.3) / 3)


def test_correction_sums_finish_to_fractions_and_mean_weight():
    from prco_mega.learner.mismatch import correction_sums, finish_mismatch

    weights = torch.tensor([1.0, 0.0, 2.0, 0.5, 9.0])
    hit = torch.tensor([False, True, False, False, True])
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    roles = torch.tensor([0, 0, 1, 1, 1], dtype=torch.int8)
    m = finish_mismatch({k: float(v) for k, v in correction_sums(
        weights, hit, mask, roles, [0, 1], "masked").items()})
    assert m["correction/masked_frac"] == 0.25 and m["correction/weight_mean"] == 0.875
    assert m["correction/observer/masked_frac"] == 0.5
    assert m["correction/solver/weight_mean"] == 1.25 and m["correction/solver/masked_frac"] == 0.0


def test_lag_histogram_is_the_fraction_of_trajectories_per_lag():
    from prco_mega.learner.mismatch import MAX_LAG, finish_mismatch, lag_counts

    # two data-parallel replicas' trajectories at step 10, summed as the step's reduction does
    parts = [lag_counts([10, 9, 9, 8], 10), lag_counts([10, 10, 8, 10 - MAX_LAG - 3], 10)]
    reduced = {k: float(parts[0][k] + parts[1][k]) for k in parts[0]}
    m = finish_mismatch(reduced)
    hist = {k.removeprefix("train/policy_lag_hist/"): v for k, v in m.items()}
    assert hist["0"] == 3 / 8 and hist["1"] == 2 / 8 and hist["2"] == 2 / 8
    assert hist[f"{MAX_LAG}+"] == 1 / 8 and hist["3"] == 0.0
    assert not any(k.startswith("lag/") for k in m)
    assert finish_mismatch({k: float(v) for k, v in lag_counts([4, 4], 4).items()}) == {
        "train/policy_lag_hist/0": 1.0}
    with pytest.raises(ValueError, match=r"policy_version \(5\) is newer than the step .* \(4\)"):
        lag_counts([5], 4)
