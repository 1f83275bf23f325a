"""Fused PPO-clip + KL loss: value, metrics and d loss / d logprob equal the torch reference."""
from __future__ import annotations

import math

import pytest
import torch
from _util import algo_or_skip, rel_err, sum_err, tol

import prco_kernels as pk

T = 300  # three interpreter blocks, the last partial


def inputs(seed, dtype, device):
    g = torch.Generator().manual_seed(seed)
    lp = -2.0 + torch.randn(T, generator=g)
    old = lp + torch.randn(T, generator=g)  # ratios from ~0.1 to ~10: every clip branch is hit
    adv = torch.randn(T, generator=g)
    ref = lp + 0.5 * torch.randn(T, generator=g)
    mask = (torch.rand(T, generator=g) > 0.3).float()
    return [x.to(device, dtype) for x in (lp, old, adv, ref)] + [mask.to(device)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kl_type", ["k1", "k2", "k3"])
@pytest.mark.parametrize("dual_clip", [None, 2.0])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_fused_ppo_kl_matches_reference(dtype, kl_type, dual_clip, level, device):
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    lp, old, adv, ref, mask = inputs(seed, dtype, device)
    if level == "token":
        w = pk.token_level_weights(mask, 250.0)
    else:
        cu = torch.tensor([0, 40, 41, 130, 200, 300], device=device)
        w = pk.sequence_level_weights(mask, cu, 7)
    cfg = dict(clip_low=0.2, clip_high=0.28, dual_clip=dual_clip, ref_logprobs=ref, kl_coef=0.1,
               kl_type=kl_type)
    a, b = lp.clone().requires_grad_(True), lp.float().requires_grad_(True)
    loss, m = pk.ppo_kl_loss(a, old, adv, w, impl="triton", **cfg)
    # the kernel widens bf16 inputs to fp32 on load: the reference sees the same widened values
    cfg["ref_logprobs"] = ref.float()
    r_loss, r_m = pk.ppo_kl_loss_reference(b, old.float(), adv.float(), w, **cfg)
    loss.backward()
    r_loss.backward()
    # both sides compute in fp32 from the same (possibly bf16) inputs
    assert sum_err(loss, r_loss, terms_magnitude(lp, old, adv, ref, w, kl_type)) < 1e-5, f"seed {seed}"
    assert rel_err(a.grad, b.grad) < tol(dtype), f"seed {seed}"  # bf16 grads are rounded to bf16
    assert a.grad.dtype == dtype
    lp32, old32 = lp.float(), old.float()
    terms = {"pg_loss": (w * adv.float().abs() * torch.exp(lp32 - old32)).sum(),
             "kl": (w * pk.kl_penalty(lp32, ref.float(), kl_type).abs()).sum()}
    for k in ("pg_loss", "kl"):  # k1 and the pg terms change sign: bound by the terms' magnitude
        assert sum_err(m[k], r_m[k], terms[k]) < 1e-5, (k, seed)
    assert m["clipped_tokens"].item() == r_m["clipped_tokens"].item() > 0
    assert m["tokens"].item() == mask.sum().item()


def terms_magnitude(lp, old, adv, ref, w, kl_type):
    """sum_t |w_t| (|A_t r_t| + 0.1 |kl_t|): the scale of the loss before cancellation."""
    lp, old, adv, ref = lp.float(), old.float(), adv.float(), ref.float()
    return (w * (adv.abs() * torch.exp(lp - old) + 0.1 * pk.kl_penalty(lp, ref, kl_type).abs())).sum()


def test_hand_computed_token(device):
    """r = e^0.5 > 1.28 with A = 1: the clip caps the gain, the gradient is zero."""
    lp, old = torch.tensor([0.0, 0.0], device=device), torch.tensor([-0.5, 0.0], device=device)
    adv, w = torch.tensor([1.0, -2.0], device=device), torch.tensor([1.0, 1.0], device=device)
    a = lp.clone().requires_grad_(True)
    loss, m = pk.ppo_kl_loss(a, old, adv, w, clip_low=0.2, clip_high=0.28)
    loss.backward()
    # token 0: max(-e^0.5, -1.28) = -1.28, grad 0; token 1: r = 1, loss 2, grad -A r = 2
    assert math.isclose(loss.item(), -1.28 + 2.0, rel_tol=1e-6)
    assert torch.allclose(a.grad.cpu(), torch.tensor([0.0, 2.0]))
    assert m["clipped_tokens"].item() == 1


def test_sequence_level_weights_average_per_sequence():
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    w = pk.sequence_level_weights(mask, torch.tensor([0, 3, 7]), 4)
    # seq 0 has 2 masked tokens, seq 1 has 4; 4 sequences globally
    assert torch.allclose(w, torch.tensor([1 / 8, 1 / 8, 0, 1 / 16, 1 / 16, 1 / 16, 1 / 16]))


def test_small_kl_is_exact_where_exp_minus_one_cancels(device):
    """k3 ~ d^2/2 for |d| ~ 1e-3: the naive exp(-d) - 1 + d in fp32 would be ~1e-4 off."""
    lp = -2.0 + torch.randn(T, dtype=torch.float64)
    ref = lp + 1e-3 * torch.randn(T, dtype=torch.float64)
    w = torch.ones(T)
    a = lp.float().to(device).requires_grad_(True)
    loss, m = pk.ppo_kl_loss(a, a.detach(), torch.zeros(T, device=device), w.to(device),
                             ref_logprobs=ref.float().to(device), kl_coef=1.0)
    loss.backward()
    d = lp.float().double() - ref.float().double()
    assert rel_err(m["kl"].cpu(), (torch.expm1(-d) + d).sum()) < 1e-5
    assert rel_err(a.grad.cpu(), -torch.expm1(-d)) < 1e-5


def test_masked_tokens_with_inf_logprobs_do_not_poison_the_loss(device):
    lp, old, adv, ref, mask = inputs(2, torch.float32, device)
    mask[:5] = 0.0
    old[:5] = float("-inf")  # e.g. prompt tokens the rollout engine never scored
    a = lp.clone().requires_grad_(True)
    loss, _ = pk.ppo_kl_loss(a, old, adv, pk.token_level_weights(mask, 100.0), ref_logprobs=ref,
                             kl_coef=0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(a.grad).all() and (a.grad[:5] == 0).all()


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_matches_prco_mega_algo_losses(level, device):
    """Value and gradient equal prco_mega.algo's ppo_clip_loss + kl_penalty + aggregate."""
    ppo_clip_loss = algo_or_skip("ppo_clip_loss")
    kl_penalty, aggregate = algo_or_skip("kl_penalty"), algo_or_skip("aggregate")
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    lp, old, adv, ref, mask = inputs(seed, torch.float32, device)
    cu = torch.tensor([0, 40, 41, 130, 200, 300], device=device)
    a, b = lp.clone().requires_grad_(True), lp.clone().requires_grad_(True)
    if level == "token":
        w = pk.token_level_weights(mask, 250.0)
    else:
        w = pk.sequence_level_weights(mask, cu, 7)
    loss, m = pk.ppo_kl_loss(a, old, adv, w, clip_low=0.2, clip_high=0.28, dual_clip=2.0,
                             ref_logprobs=ref, kl_coef=0.1, kl_type="k3")
    per_token, clipped = ppo_clip_loss(b, old, adv, clip_low=0.2, clip_high=0.28, dual_clip=2.0)
    per_token = per_token + 0.1 * kl_penalty(b, ref, "k3")
    denominator = 250.0 if level == "token" else 7
    r_loss = aggregate(per_token, mask, denominator=denominator, level=level, cu_seqlens=cu)
    loss.backward()
    r_loss.backward()
    assert rel_err(loss, r_loss) < 1e-5, f"seed {seed}"
    assert rel_err(a.grad, b.grad) < 1e-5, f"seed {seed}"
    assert m["clipped_tokens"].item() == (clipped & (mask != 0)).sum().item()
