"""PPO-clip, KL estimators, global-denominator aggregation and the combined PRCO loss."""
import math

import pytest
import torch

from prco_mega.algo import aggregate, kl_penalty, ppo_clip_loss, prco_loss, truncated_is_weights
from prco_mega.types import Role

O, S = int(Role.OBSERVER), int(Role.SOLVER)
f64 = torch.float64
ln = math.log


def t(*values):
    return torch.tensor(values, dtype=f64)


# ---------------------------------------------------------------- PPO clip


def test_ppo_clip_hand_case_with_asymmetric_clip():
    # clip_low 0.2, clip_high 0.28: rho is clamped into [0.8, 1.28].
    ratios = t(1.0, 1.5, 1.5, 0.5, 0.5, 1.1)
    adv = t(2.0, 1.0, -1.0, -1.0, 1.0, 1.0)
    # rho=1,   A=2:  -2                                   (no clip)
    # rho=1.5, A=1:  max(-1.5, -1.28) = -1.28             (clipped: too far up on A>0)
    # rho=1.5, A=-1: max(1.5, 1.28) = 1.5                 (no clip: wrong direction)
    # rho=0.5, A=-1: max(0.5, 0.8) = 0.8                  (clipped: too far down on A<0)
    # rho=0.5, A=1:  max(-0.5, -0.8) = -0.5               (no clip)
    # rho=1.1, A=1:  -1.1                                 (inside)
    loss, clipped = ppo_clip_loss(ratios.log(), torch.zeros(6, dtype=f64), adv, clip_low=0.2, clip_high=0.28)
    torch.testing.assert_close(loss, t(-2.0, -1.28, 1.5, 0.8, -0.5, -1.1))
    assert clipped.tolist() == [False, True, False, True, False, False]


def test_dual_clip_hand_case():
    ratios = t(5.0, 2.0, 5.0)
    adv = t(-2.0, -2.0, 2.0)
    # rho=5, A=-2: max(10, 2*1.2) = 10, dual c=3 -> min(10, 6) = 6  (clipped)
    # rho=2, A=-2: 4 < 6 -> 4                                        (not clipped)
    # rho=5, A=2:  max(-10, -2.4) = -2.4, dual clip does not apply   (clipped by the upper clip)
    loss, clipped = ppo_clip_loss(ratios.log(), torch.zeros(3, dtype=f64), adv, dual_clip=3.0)
    torch.testing.assert_close(loss, t(6.0, 4.0, -2.4))
    assert clipped.tolist() == [True, False, True]


def test_ratio_one_gives_minus_advantage():
    adv = torch.randn(50, generator=torch.Generator().manual_seed(0), dtype=f64)
    lp = torch.randn(50, dtype=f64)
    loss, clipped = ppo_clip_loss(lp, lp.clone(), adv, dual_clip=3.0)
    torch.testing.assert_close(loss, -adv)
    assert not clipped.any()


@pytest.mark.parametrize("low,high", [(0.2, 0.2), (0.2, 0.28), (0.1, 0.5)])
def test_clip_activates_exactly_outside_the_band_in_the_direction_that_matters(low, high):
    ratios = torch.linspace(0.3, 2.0, 341, dtype=f64)
    ratios = ratios[((ratios - (1 - low)).abs() > 1e-9) & ((ratios - (1 + high)).abs() > 1e-9)]
    lp, old = ratios.log(), torch.zeros_like(ratios)
    for sign in (1.0, -1.0):
        adv = torch.full_like(ratios, sign * 0.7)
        loss, clipped = ppo_clip_loss(lp, old, adv, clip_low=low, clip_high=high)
        expected = ratios > 1 + high if sign > 0 else ratios < 1 - low
        assert torch.equal(clipped, expected)
        bound = 1 + high if sign > 0 else 1 - low
        torch.testing.assert_close(loss[clipped], -adv[clipped] * bound)
        torch.testing.assert_close(loss[~clipped], -adv[~clipped] * ratios[~clipped])


def test_dual_clip_bounds_the_loss_for_negative_advantages_only():
    g = torch.Generator().manual_seed(1)
    lp = torch.randn(400, generator=g, dtype=f64) * 3  # ratios up to e^9
    old = torch.zeros_like(lp)
    adv = torch.randn(400, generator=g, dtype=f64)
    plain, _ = ppo_clip_loss(lp, old, adv)
    dual, _ = ppo_clip_loss(lp, old, adv, dual_clip=3.0)
    neg = adv < 0
    assert (dual[neg] <= -adv[neg] * 3.0 + 1e-12).all()
    assert (plain[neg] > -adv[neg] * 3.0).any()  # the bound was needed somewhere
    assert torch.equal(dual[~neg], plain[~neg])
    with pytest.raises(ValueError, match="dual_clip"):
        ppo_clip_loss(lp, old, adv, dual_clip=1.0)


def test_ppo_gradient_is_minus_advantage_times_ratio_where_not_clipped():
    g = torch.Generator().manual_seed(2)
    lp = (torch.randn(200, generator=g, dtype=f64) * 0.5).requires_grad_()
    adv = torch.randn(200, generator=g, dtype=f64)
    loss, clipped = ppo_clip_loss(lp, torch.zeros_like(lp), adv, clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    (grad,) = torch.autograd.grad(loss.sum(), lp)
    expected = -adv * lp.detach().exp() * (~clipped).to(f64)
    torch.testing.assert_close(grad, expected)
    assert clipped.any() and (~clipped).any()


# ---------------------------------------------------------------- KL


def test_kl_estimators_hand_case():
    lp = t(0.0, ln(2.0), -ln(2.0))
    ref = torch.zeros(3, dtype=f64)
    # delta = 0, ln2, -ln2
    torch.testing.assert_close(kl_penalty(lp, ref, "k1"), t(0.0, ln(2), -ln(2)))
    torch.testing.assert_close(kl_penalty(lp, ref, "k2"), t(0.0, 0.5 * ln(2) ** 2, 0.5 * ln(2) ** 2))
    # k3 = e^-delta - 1 + delta: 0;  1/2 - 1 + ln2 = 0.19315;  2 - 1 - ln2 = 0.30685
    torch.testing.assert_close(kl_penalty(lp, ref, "k3"), t(0.0, ln(2) - 0.5, 1 - ln(2)))


def test_k3_is_non_negative_and_all_vanish_at_equal_logprobs():
    g = torch.Generator().manual_seed(3)
    lp = torch.randn(1000, generator=g) * 4
    ref = torch.randn(1000, generator=g) * 4
    assert (kl_penalty(lp, ref, "k3") >= 0).all()
    assert (kl_penalty(lp, ref, "k2") >= 0).all()
    for kind in ("k1", "k2", "k3"):
        assert torch.equal(kl_penalty(lp, lp.clone(), kind), torch.zeros_like(lp))
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(lp, ref, "k4")


def test_k1_and_k3_are_unbiased_for_the_exact_kl():
    # Expectation over tokens sampled from p, computed exactly: sum_i p_i k(log p_i, log q_i).
    g = torch.Generator().manual_seed(4)
    logp = torch.randn(7, generator=g, dtype=f64).log_softmax(0)
    logq = torch.randn(7, generator=g, dtype=f64).log_softmax(0)
    exact_kl = (logp.exp() * (logp - logq)).sum()
    for kind in ("k1", "k3"):
        torch.testing.assert_close((logp.exp() * kl_penalty(logp, logq, kind)).sum(), exact_kl)


def test_k3_keeps_precision_for_tiny_differences():
    delta = torch.tensor([1e-9], dtype=f64)
    # e^-d - 1 + d = d^2/2 - d^3/6 + ... = 5e-19 (to 1e-10 relative); exp(-d) - 1 alone would
    # carry an absolute rounding error of ~1e-16, a thousand times the value.
    torch.testing.assert_close(kl_penalty(delta, torch.zeros(1, dtype=f64), "k3"), t(5e-19), rtol=1e-5, atol=0)


# ---------------------------------------------------------------- aggregation


def test_aggregate_hand_case():
    values = t(1, 2, 3, 4, 5, 9)
    mask = t(1, 1, 1, 1, 0, 1)
    cu = torch.tensor([0, 3, 6])
    # token: (1 + 2 + 3 + 4 + 9) / 5 = 3.8
    torch.testing.assert_close(aggregate(values, mask, denominator=5.0), torch.tensor(3.8, dtype=f64))
    # sequence: mean(1, 2, 3) = 2, mean(4, 9) = 6.5 -> (2 + 6.5) / 2 = 4.25
    torch.testing.assert_close(
        aggregate(values, mask, denominator=2.0, level="sequence", cu_seqlens=cu), torch.tensor(4.25, dtype=f64)
    )


def test_aggregate_ignores_garbage_at_masked_positions():
    values = t(1.0, float("nan"), float("inf"), 3.0)
    mask = t(1, 0, 0, 1)
    assert aggregate(values, mask, denominator=2.0) == 2.0
    assert aggregate(values, mask, denominator=2.0, level="sequence", cu_seqlens=torch.tensor([0, 2, 4])) == 2.0


def test_aggregate_errors():
    with pytest.raises(ValueError, match="mean"):
        aggregate(t(1.0), t(1.0), denominator=1.0, level="mean")
    with pytest.raises(ValueError, match="cu_seqlens"):
        aggregate(t(1.0), t(1.0), denominator=1.0, level="sequence")


def _packed_batch(seed, lengths=(5, 3, 7, 4, 6, 2)):
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    mask = (torch.rand(T, generator=g) > 0.3).to(f64)
    mask[cu[:-1]] = 0.0  # the first token of every sequence is never a loss token
    roles = torch.repeat_interleave(torch.tensor([O, S, S, O, S, O]), torch.tensor(lengths))
    return dict(
        logprobs=torch.randn(T, generator=g, dtype=f64) * 0.3 - 1.0,
        old_logprobs=torch.randn(T, generator=g, dtype=f64) * 0.3 - 1.0,
        ref_logprobs=torch.randn(T, generator=g, dtype=f64) * 0.3 - 1.0,
        advantages=torch.randn(T, generator=g, dtype=f64),
        loss_mask=mask,
        role_ids=roles.to(torch.int8),
        cu_seqlens=cu,
    )


def _split(batch, n_seqs):
    """(first n_seqs sequences, the rest), as two packed micro-batches."""
    cu = batch["cu_seqlens"]
    cut = int(cu[n_seqs])
    head = {k: v[:cut] for k, v in batch.items() if k != "cu_seqlens"}
    tail = {k: v[cut:] for k, v in batch.items() if k != "cu_seqlens"}
    head["cu_seqlens"], tail["cu_seqlens"] = cu[: n_seqs + 1], cu[n_seqs:] - cut
    return head, tail


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_two_micro_batches_with_the_global_denominator_equal_the_whole_batch(level):
    batch = _packed_batch(5)
    values, mask, cu = batch["advantages"], batch["loss_mask"], batch["cu_seqlens"]
    denom = float(mask.sum()) if level == "token" else float(cu.numel() - 1)
    whole = aggregate(values, mask, denominator=denom, level=level, cu_seqlens=cu)
    head, tail = _split(batch, 2)
    parts = [
        aggregate(mb["advantages"], mb["loss_mask"], denominator=denom, level=level, cu_seqlens=mb["cu_seqlens"])
        for mb in (head, tail)
    ]
    torch.testing.assert_close(parts[0] + parts[1], whole)
    if level == "token":  # a per-micro-batch mean would not (the global denominator matters)
        local = [
            aggregate(mb["advantages"], mb["loss_mask"], denominator=float(mb["loss_mask"].sum()))
            for mb in (head, tail)
        ]
        assert abs(float(sum(local) / 2 - whole)) > 1e-3


# ---------------------------------------------------------------- PRCO loss


def test_prco_loss_hand_case():
    roles = torch.tensor([O, O, O, S, S, S], dtype=torch.int8)
    mask = t(0, 1, 1, 0, 1, 1)
    adv = t(0, 1, 1, 0, -2, 4)
    lp = torch.full((6,), -1.0, dtype=f64)
    ref = lp - ln(2.0)  # delta = ln 2 everywhere, so k1 = ln 2
    # Global denominators: this micro-batch holds 2 of the step's 4 Observer loss tokens.
    denoms = {Role.OBSERVER: 4.0, Role.SOLVER: 2.0}
    # ratio 1 -> per-token loss -A.  Observer: (-1 - 1) / 4 = -0.5.  Solver: (2 - 4) / 2 = -1.
    # KL (k1): Observer 2 ln2 / 4, Solver 2 ln2 / 2; times 0.1.
    loss, m = prco_loss(
        lp, lp.clone(), adv, mask, roles, denoms, clip_low=0.2, clip_high=0.28,
        ref_logprobs=ref, kl_coef=0.1, kl_kind="k1",
    )
    torch.testing.assert_close(loss, torch.tensor(-1.5 + 0.1 * 1.5 * ln(2), dtype=f64))
    torch.testing.assert_close(m["observer/pg_loss"], torch.tensor(-0.5, dtype=f64))
    torch.testing.assert_close(m["solver/pg_loss"], torch.tensor(-1.0, dtype=f64))
    torch.testing.assert_close(m["solver/kl"], torch.tensor(ln(2), dtype=f64))
    torch.testing.assert_close(m["observer/ratio_mean"], torch.tensor(0.5, dtype=f64))  # 2 tokens / 4
    assert float(m["solver/clip_frac"]) == 0.0 and int(m["unassigned_tokens"]) == 0
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in m.values())


def test_prco_loss_counts_tokens_of_roles_without_a_denominator():
    roles = torch.tensor([O, O, S, S], dtype=torch.int8)
    mask = t(1, 1, 1, 0)
    lp = torch.zeros(4, dtype=f64)
    loss, m = prco_loss(lp, lp, t(1, 1, 1, 1), mask, roles, {O: 2.0}, clip_low=0.2, clip_high=0.2)
    assert float(loss) == -1.0 and int(m["unassigned_tokens"]) == 1
    with pytest.raises(ValueError, match="ref_logprobs"):
        prco_loss(lp, lp, lp, mask, roles, {O: 2.0}, clip_low=0.2, clip_high=0.2, kl_coef=0.1)


def _loss_fn(batch, denoms, level, **kw):
    def f(logprobs):
        loss, _ = prco_loss(
            logprobs, batch["old_logprobs"], batch["advantages"], batch["loss_mask"], batch["role_ids"], denoms,
            clip_low=0.2, clip_high=0.28, ref_logprobs=batch["ref_logprobs"], level=level,
            cu_seqlens=batch["cu_seqlens"], **kw,
        )
        return loss
    return f


def _kinks_away(batch):
    """Move log-ratios off the clip boundaries so finite differences do not straddle a kink."""
    lr = batch["logprobs"] - batch["old_logprobs"]
    for b in (ln(0.8), ln(1.28), ln(3.0)):
        lr = torch.where((lr - b).abs() < 1e-3, lr + 3e-3, lr)
    batch["logprobs"] = batch["old_logprobs"] + lr


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_prco_loss_gradcheck(level):
    batch = _packed_batch(6)
    _kinks_away(batch)
    denoms = {O: 11.0, S: 7.0}
    f = _loss_fn(batch, denoms, level, kl_coef=0.05, kl_kind="k3", dual_clip=3.0)
    assert torch.autograd.gradcheck(f, (batch["logprobs"].clone().requires_grad_(),))


def test_prco_loss_gradient_matches_hand_formula():
    batch = _packed_batch(7)
    lp = (batch["logprobs"] + torch.linspace(-0.6, 0.6, batch["logprobs"].numel(), dtype=f64)).requires_grad_()
    denoms = {O: 10.0, S: 6.0}
    w = truncated_is_weights(batch["old_logprobs"], batch["old_logprobs"] + 0.1, cap=2.0)
    f = _loss_fn(batch, denoms, "token", kl_coef=0.2, kl_kind="k3", is_weights=w)
    (grad,) = torch.autograd.grad(f(lp), lp)
    # d/dlogp [mask/D_role * (w * pg + beta * k3)] with
    #   d pg/d logp = -A * rho * (1 - clipped),  d k3/d logp = 1 - exp(-(logp - ref)).
    _, clipped = ppo_clip_loss(
        lp.detach(), batch["old_logprobs"], batch["advantages"], clip_low=0.2, clip_high=0.28
    )
    rho = (lp.detach() - batch["old_logprobs"]).exp()
    d_pg = -batch["advantages"] * rho * (~clipped).to(f64)
    d_k3 = 1 - torch.exp(-(lp.detach() - batch["ref_logprobs"]))
    per_role_denom = torch.where(batch["role_ids"] == O, 10.0, 6.0).to(f64)
    expected = batch["loss_mask"] / per_role_denom * (w * d_pg + 0.2 * d_k3)
    torch.testing.assert_close(grad, expected)
    assert clipped.any()


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_prco_loss_over_micro_batches_equals_the_whole_batch(level):
    batch = _packed_batch(8)
    mask, roles, cu = batch["loss_mask"], batch["role_ids"], batch["cu_seqlens"]
    if level == "token":
        denoms = {r: float((mask * (roles == r)).sum()) for r in (O, S)}
    else:
        denoms = {r: float((roles[cu[:-1]] == r).sum()) for r in (O, S)}
    whole = _loss_fn(batch, denoms, level, kl_coef=0.1)(batch["logprobs"])
    head, tail = _split(batch, 3)
    parts = sum(_loss_fn(mb, denoms, level, kl_coef=0.1)(mb["logprobs"]) for mb in (head, tail))
    torch.testing.assert_close(parts, whole)


def test_truncated_is_weights_hand_case():
    rollout = torch.zeros(3, dtype=f64)
    learner = t(0.0, ln(2.0), ln(10.0)).requires_grad_()
    # exp(0) = 1, exp(ln 2) = 2, exp(ln 10) = 10 capped at 5; a constant (no gradient).
    w = truncated_is_weights(learner, rollout, cap=5.0)
    torch.testing.assert_close(w, t(1.0, 2.0, 5.0))
    assert not w.requires_grad


def test_nll_loss_is_the_per_role_mean_negative_log_likelihood():
    from prco_mega.algo import nll_loss

    # observer tokens (-1, -3) / D_O = 4 -> 1.0; solver token (-2) / D_S = 2 -> 1.0; masked token out
    logprobs = torch.tensor([-1.0, -3.0, -2.0, -7.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    roles = torch.tensor([0, 0, 1, 1])
    loss, metrics = nll_loss(logprobs, mask, roles, {0: 4.0, 1: 2.0})
    assert loss.item() == pytest.approx(2.0)
    assert metrics["observer/nll"].item() == pytest.approx(1.0)
    assert metrics["solver/nll"].item() == pytest.approx(1.0)


def test_non_finite_loss_names_the_role():
    from prco_mega.learner.train_step import NonFiniteLoss, raise_if_not_finite

    raise_if_not_finite({"loss": 1.0, "solver/pg_loss": 0.5, "grad_norm": float("nan")})
    with pytest.raises(NonFiniteLoss, match=r"solver/pg_loss=nan"):
        raise_if_not_finite({"loss": float("nan"), "solver/pg_loss": float("nan"),
                             "observer/pg_loss": 0.1})
