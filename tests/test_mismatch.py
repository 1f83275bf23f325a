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
