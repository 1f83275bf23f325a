"""Fused loss head: log-probs, entropy, loss AND the LM-head gradients in one pass over token chunks.

For a per-token loss L = sum_t f_t(logprob_t, entropy_t) whose derivatives are known at forward
time (PPO-clip + KL is one), each token chunk's logits are computed once, reduced to statistics
(all_reduced over TP), turned into d L / d logits in place, and multiplied into grad_hidden and
grad_weight before the next chunk. 6 T H V FLOPs (no recompute) and one [chunk, V_local] buffer.
The autograd backward then only scales the stored gradients by the incoming grad.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.distributed as dist

from ._dispatch import check_impl
from .logprob import (chunk_grad, chunk_logits_fp32, chunk_stats, chunk_tokens_for, finish_stats,
                      grad_logits_into, reduce_stats_tp, validate, vocab_start_of)
from .ppo_loss import ppo_kl_loss_and_grad, ppo_kl_loss_reference

# loss_fn(logprob [C], entropy [C], start, end) -> (loss [], dL/dlogprob [C], dL/dentropy [C] | None)
LossFn = Callable[[torch.Tensor, torch.Tensor, int, int],
                  tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]]


def loss_head_pass(hidden, weight, targets, loss_fn, inv_temp, process_group, impl, chunk_tokens):
    """(loss [], logprob [T], entropy [T], grad_hidden [T, H], grad_weight [V_local, H])."""
    v0 = vocab_start_of(weight, process_group)
    T = hidden.shape[0]
    lp_all = torch.empty(T, device=hidden.device, dtype=torch.float32)
    ent_all = torch.empty_like(lp_all)
    grad_h = torch.empty_like(hidden)
    grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32)
    loss = torch.zeros((), device=hidden.device, dtype=torch.float32)
    for a in range(0, T, chunk_tokens):
        b = min(a + chunk_tokens, T)
        z = chunk_logits_fp32(hidden[a:b], weight)  # [C, V_local], reused in place for the gradient
        stats = reduce_stats_tp(chunk_stats(z, targets[a:b], v0, inv_temp, impl), process_group)
        lp, ent, lse, mu = finish_stats(stats)
        loss_c, g_lp, g_ent = loss_fn(lp, ent, a, b)
        loss += loss_c
        lp_all[a:b], ent_all[a:b] = lp, ent
        chunk_grad(z, targets[a:b], v0, inv_temp, lse, mu, g_lp.float().contiguous(),
                   None if g_ent is None else g_ent.float().contiguous(), impl)
        grad_logits_into(z, hidden[a:b], weight, grad_h[a:b], grad_w)
    if process_group is not None and dist.get_world_size(process_group) > 1:
        dist.all_reduce(grad_h, group=process_group)
    return loss, lp_all, ent_all, grad_h, grad_w.to(weight.dtype)


class _FusedLossHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, loss_fn, inv_temp, process_group, impl, chunk_tokens):
        loss, lp, ent, gh, gw = loss_head_pass(hidden, weight, targets, loss_fn, inv_temp,
                                               process_group, impl, chunk_tokens)
        ctx.save_for_backward(gh, gw)
        ctx.mark_non_differentiable(lp, ent)
        return loss, lp, ent

    @staticmethod
    def backward(ctx, grad_loss, _g_lp, _g_ent):
        gh, gw = ctx.saved_tensors
        scale = grad_loss.to(gh.dtype)
        return gh * scale, gw * scale, None, None, None, None, None, None


def fused_logprob_loss_head(hidden, weight, targets, loss_fn: LossFn, *, temperature=1.0,
                            process_group=None, chunk_tokens=None, impl="triton"):
    """(loss [], logprob [T], entropy [T]) with loss differentiable in hidden [T, H] and weight [V_local, H].

    loss_fn(logprob_c, entropy_c, start, end) gets the global (TP-reduced) log-probs and entropy of
    tokens [start, end) and returns (loss_c, dL/dlogprob_c, dL/dentropy_c or None); the loss is
    the sum of loss_c, so every per-token loss with global (not per-chunk) normalisation fits.
    logprob/entropy come back detached (for metrics). 6 T H V FLOPs, one [chunk, V_local] buffer.
    """
    check_impl(impl, hidden.device)
    validate(hidden, weight, targets, temperature)
    chunk = chunk_tokens_for(weight.shape[0], chunk_tokens)
    return _FusedLossHead.apply(hidden.contiguous(), weight.contiguous(), targets.contiguous(), loss_fn,
                                1.0 / float(temperature), process_group, impl, chunk)


def ppo_kl_loss_fn(old_logprobs, advantages, loss_weights, *, ref_logprobs=None, entropy_coef=0.0,
                   impl="triton", **ppo_kwargs) -> LossFn:
    """A LossFn for the PPO-clip + KL loss of ppo_loss.py, minus entropy_coef * sum w * entropy.

    Its value and d L / d logprob come from the fused PPO kernel in one pass (impl="triton") or
    from torch autograd on the reference (impl="torch"). All tensors are [T], indexed by chunk.
    """
    def loss_fn(lp, ent, a, b):
        ref = None if ref_logprobs is None else ref_logprobs[a:b]
        w = loss_weights[a:b]
        if impl == "triton":
            loss, g_lp = ppo_kl_loss_and_grad(lp, old_logprobs[a:b], advantages[a:b], w,
                                              ref_logprobs=ref, **ppo_kwargs)
        else:
            x = lp.detach().requires_grad_(True)
            with torch.enable_grad():
                loss, _ = ppo_kl_loss_reference(x, old_logprobs[a:b], advantages[a:b], w,
                                                ref_logprobs=ref, **ppo_kwargs)
                (g_lp,) = torch.autograd.grad(loss, x)
            loss = loss.detach()
        if entropy_coef == 0.0:
            return loss, g_lp, None
        wf = w.float()
        return loss - entropy_coef * (wf * ent).sum(), g_lp, -entropy_coef * wf

    return loss_fn
