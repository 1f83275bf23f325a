"""Truncated importance sampling (`prco_mega.learner.loss_paths.apply_tis`, `LossSettings.tis_cap`).

The batch's `old_logprobs` are the rollout engine's; TIS takes the learner's own log-probs before
the step (`learner_old`) as the PPO old policy and weights each token's clipped loss by
`w = min(exp(learner_old - rollout), cap)`, a constant. The rewrite scales the advantages by w.
"""
from __future__ import annotations

import math

import pytest
import torch

from prco_mega.algo.losses import prco_loss
from prco_mega.learner.loss_head import role_token_weights
from prco_mega.learner.loss_paths import apply_tis
from prco_mega.types import Role, TrainBatch

CAP = 2.0
# learner_old - rollout on the 6 tokens: two prompt tokens, then four response tokens
LOG_RATIOS = [math.log(100.0), 0.0, math.log(0.5), 0.0, math.log(3.0), math.log(10.0)]


def _batch() -> TrainBatch:
    rollout = torch.tensor([-1.0, -2.0, -3.0, -0.5, -4.0, -2.5])
    return TrainBatch(
        tokens=torch.arange(6), cu_seqlens=torch.tensor([0, 6], dtype=torch.int32),
        role_ids=torch.full((6,), int(Role.SOLVER), dtype=torch.int8),
        loss_mask=torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 1.0]),
        old_logprobs=rollout, advantages=torch.tensor([0.0, 0.0, 2.0, -1.0, 1.5, -0.5]),
        role_denominators={Role.SOLVER: 4.0})


def _learner_old(batch: TrainBatch) -> torch.Tensor:
    return batch.old_logprobs + torch.tensor(LOG_RATIOS)


def test_weights_are_the_capped_ratio_on_loss_tokens_only():
    batch = _batch()
    tis = apply_tis(batch, _learner_old(batch), CAP)
    # hand-computed: w = min(ratio, 2) = [-, -, 0.5, 1, 2 (3 capped), 2 (10 capped)]
    want_adv = torch.tensor([0.0, 0.0, 2.0 * 0.5, -1.0 * 1.0, 1.5 * 2.0, -0.5 * 2.0])
    torch.testing.assert_close(tis.advantages, want_adv)
    assert torch.equal(tis.old_logprobs, _learner_old(batch))  # PPO ratio vs the learner's policy
    # the prompt token with ratio 100 keeps its advantage (0): weights act on loss tokens only
    assert tis.advantages[0] == 0.0
    assert torch.equal(batch.advantages, _batch().advantages)  # the input batch is not modified


def test_loss_at_the_learner_policy_is_minus_weighted_advantages():
    batch = _batch()
    tis = apply_tis(batch, _learner_old(batch), CAP)
    # logprobs = learner_old: every ratio is 1, so L = -sum(w * A) / D
    loss, metrics = prco_loss(_learner_old(batch), tis.old_logprobs, tis.advantages, tis.loss_mask,
                              tis.role_ids, {int(Role.SOLVER): 4.0}, clip_low=0.2, clip_high=0.2)
    want = -(2.0 * 0.5 - 1.0 * 1.0 + 1.5 * 2.0 - 0.5 * 2.0) / 4.0
    assert loss.item() == pytest.approx(want, abs=1e-7)
    assert metrics["solver/clip_frac"].item() == 0.0


@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_rewrite_equals_weighting_the_per_token_loss(dual_clip):
    """apply_tis + prco_loss == prco_loss(old=learner_old, is_weights=w): value and gradient,
    with log-probs far enough from learner_old that clip (and dual clip) branches are taken."""
    batch = _batch()
    learner_old = _learner_old(batch)
    tis = apply_tis(batch, learner_old, CAP)
    w = torch.exp(torch.tensor(LOG_RATIOS)).clamp(max=CAP)
    lp = (learner_old + torch.tensor([0.0, 0.0, 0.9, -0.7, 0.05, 1.6])).requires_grad_(True)
    kw = {"clip_low": 0.2, "clip_high": 0.28, "dual_clip": dual_clip}
    den = {int(Role.SOLVER): 4.0}
    loss, m = prco_loss(lp, tis.old_logprobs, tis.advantages, tis.loss_mask, tis.role_ids, den, **kw)
    (g,) = torch.autograd.grad(loss, lp)
    lp2 = lp.detach().requires_grad_(True)
    ref, m_ref = prco_loss(lp2, learner_old, batch.advantages, batch.loss_mask, batch.role_ids, den,
                           is_weights=w, **kw)
    (g_ref,) = torch.autograd.grad(ref, lp2)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=1e-6)
    assert m["solver/clip_frac"].item() == m_ref["solver/clip_frac"].item() > 0


def test_cap_bounds_every_weight():
    g = torch.Generator().manual_seed(0)
    batch = _batch()
    learner_old = batch.old_logprobs + 3.0 * torch.randn(6, generator=g)
    for cap in (0.5, 1.0, 4.0):
        w = apply_tis(batch, learner_old, cap).advantages[2:] / batch.advantages[2:]
        raw = torch.exp(learner_old - batch.old_logprobs)[2:]
        torch.testing.assert_close(w, torch.minimum(raw, torch.tensor(cap)))
        assert (w <= cap + 1e-6).all()


def test_bad_inputs_raise_with_their_values():
    batch = _batch()
    with pytest.raises(ValueError, match=r"cap \(0.0\)"):
        apply_tis(batch, _learner_old(batch), 0.0)
    with pytest.raises(ValueError, match=r"\(5,\)"):
        apply_tis(batch, torch.zeros(5), CAP)


def test_per_token_weights_match_prco_loss_aggregation():
    """The fused path's per-token weights reproduce `prco_loss`'s per-role global aggregation,
    token and sequence level (two roles, a role absent from the step contributing nothing)."""
    g = torch.Generator().manual_seed(1)
    cu = torch.tensor([0, 5, 9, 14], dtype=torch.int32)
    roles = torch.tensor([0] * 5 + [1] * 4 + [0] * 5, dtype=torch.int8)
    mask = torch.tensor([0, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1], dtype=torch.float32)
    values = torch.randn(14, generator=g)
    for level, den in (("token", {0: 11.0, 1: 7.0}), ("sequence", {0: 5.0, 1: 3.0, 2: 0.0})):
        w = sum(role_token_weights(mask, roles, den, level, cu).values())
        # prco_loss with old = lp and A = -values: pg_t = values_t (ratio 1, never clipped)
        want, _ = prco_loss(torch.zeros(14), torch.zeros(14), -values, mask, roles, den,
                            clip_low=0.2, clip_high=0.2, level=level, cu_seqlens=cu)
        assert (w * values).sum().item() == pytest.approx(want.item(), abs=1e-6), level
