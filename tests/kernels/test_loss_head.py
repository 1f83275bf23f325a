"""Fused loss head: the loss and its gradients, computed in the forward pass, equal autograd's."""
from __future__ import annotations

import pytest
import torch
from _util import log_ratios_away_from_clip, rel_err, sum_err, tol
from test_logprob import make_inputs

import prco_kernels as pk

T, V = 37, 101


def ppo_inputs(seed, device, hidden, weight, targets):
    """Old/reference log-probs near the current policy's, as in training, with ratios clear of the
    clip edges (see log_ratios_away_from_clip)."""
    g = torch.Generator().manual_seed(seed)
    lp = pk.linear_logprob_entropy_reference(hidden.detach(), weight.detach(), targets)[0].cpu()
    old = lp - log_ratios_away_from_clip(T, g)
    adv = torch.randn(T, generator=g)
    ref = lp + 0.3 * torch.randn(T, generator=g)
    mask = (torch.rand(T, generator=g) > 0.25).float()
    return [x.to(device) for x in (old, adv, ref, pk.token_level_weights(mask, 29.0))]


def reference_loss(hidden, weight, targets, old, adv, ref, w, temperature, cfg, entropy_coef):
    h = hidden.detach().double().requires_grad_(True)
    wt = weight.detach().double().requires_grad_(True)
    lp, ent = pk.linear_logprob_entropy_reference(h, wt, targets, temperature)  # fp32 inside
    lp, ent = lp.double(), ent.double()
    loss, _ = pk.ppo_kl_loss_reference(lp, old.double(), adv.double(), w.double(),
                                       ref_logprobs=ref.double(), **cfg)
    loss = loss - entropy_coef * (w.double() * ent).sum()
    loss.backward()
    return loss, lp, h.grad, wt.grad


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_loss_head_matches_autograd_through_full_softmax(impl, dtype, device):
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    hidden, weight, targets = make_inputs(seed, dtype, device)
    old, adv, ref, w = ppo_inputs(seed, device, hidden, weight, targets)
    cfg = dict(clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_coef=0.05, kl_type="k3")
    loss_fn = pk.ppo_kl_loss_fn(old, adv, w, ref_logprobs=ref, entropy_coef=0.01, impl=impl, **cfg)
    loss, lp, _ = pk.fused_logprob_loss_head(hidden, weight, targets, loss_fn, temperature=0.9,
                                             chunk_tokens=16, impl=impl)
    (2.0 * loss).backward()  # the stored gradients must be scaled by the incoming gradient
    r_loss, r_lp, r_gh, r_gw = reference_loss(hidden, weight, targets, old, adv, ref, w, 0.9, cfg, 0.01)
    assert rel_err(lp, r_lp) < tol(dtype), f"seed {seed}"
    # the loss is a sum of +- terms: bound its error by the terms' magnitudes, not by the sum
    magnitude = (w * adv.abs() * torch.exp(r_lp.float() - old)).sum() + 0.01 * w.sum() * 5
    assert sum_err(loss, r_loss, magnitude) < tol(dtype), f"seed {seed}"
    # bf16: logits and d loss / d logits stay fp32 in the chunk buffer; the only roundings left
    # are the bf16 inputs (shared with the reference) and d logits -> bf16 for the hidden GEMM.
    grad_tol = 1e-5 if dtype == torch.float32 else 1e-2  # measured max 3.1e-3 over 80 runs
    assert rel_err(hidden.grad, 2.0 * r_gh) < grad_tol, f"seed {seed}"
    assert rel_err(weight.grad, 2.0 * r_gw) < grad_tol, f"seed {seed}"


def test_loss_head_equals_logprob_op_then_loss(device):
    """The 6THV fused path and the 8THV recompute path are the same function."""
    hidden, weight, targets = make_inputs(11, torch.float32, device)
    old, adv, ref, w = ppo_inputs(11, device, hidden, weight, targets)
    fn = pk.ppo_kl_loss_fn(old, adv, w, clip_low=0.2, clip_high=0.2)
    loss, _, _ = pk.fused_logprob_loss_head(hidden, weight, targets, fn, chunk_tokens=8)
    gh, gw = torch.autograd.grad(loss, (hidden, weight))
    lp, _ = pk.linear_logprob_entropy(hidden, weight, targets, chunk_tokens=8)
    loss2, _ = pk.ppo_kl_loss(lp, old, adv, w, clip_low=0.2, clip_high=0.2)
    gh2, gw2 = torch.autograd.grad(loss2, (hidden, weight))
    assert rel_err(loss, loss2) < 1e-5
    assert rel_err(gh, gh2) < 1e-5 and rel_err(gw, gw2) < 1e-5
