"""Fused PPO-clip + KL loss: per-token loss, masked partial sums and d loss / d logprob in one pass.

Per token t (r = exp(lp - old), A = advantage):
    pg   = max(-A * r, -A * clamp(r, 1 - clip_low, 1 + clip_high))
    pg   = min(pg, -A * dual_clip)                       for A < 0, when dual_clip is set
    kl   = k1: d | k2: d^2 / 2 | k3: exp(-d) - 1 + d     with d = lp - ref
    loss = sum_t w_t * (pg_t + kl_coef * kl_t)
Aggregation lives in the per-token weights w [T] (masks folded in), which makes token- and
sequence-level normalisation one kernel:
    token level:    w_t = mask_t / global_denominator
    sequence level: w_t = mask_t / (masked_len(seq(t)) * global_num_seqs)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._dispatch import check_impl, interpreting

KL_TYPES = {"k1": 1, "k2": 2, "k3": 3}
N_STATS = 4  # partial sums per block: w*pg, w*kl, #clipped, #weighted tokens


# ---------------------------------------------------------------- torch references
def ppo_clip_loss(logprobs, old_logprobs, advantages, clip_low, clip_high, dual_clip=None):
    """Per-token PPO-clip loss [T] (formula in the module doc); differentiable in `logprobs`."""
    ratio = torch.exp(logprobs - old_logprobs)
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(-advantages * ratio, -advantages * clipped)
    if dual_clip is not None:
        loss = torch.where(advantages < 0, torch.minimum(loss, -advantages * dual_clip), loss)
    return loss


def kl_penalty(logprobs, ref_logprobs, kl_type="k3"):
    """Per-token KL estimator [T] with d = lp - ref: k1 = d, k2 = d^2/2, k3 = exp(-d) - 1 + d."""
    delta = logprobs - ref_logprobs
    if kl_type == "k1":
        return delta
    if kl_type == "k2":
        return 0.5 * delta * delta
    if kl_type == "k3":
        return torch.expm1(-delta) + delta
    raise ValueError(f"kl_type must be one of {sorted(KL_TYPES)}, got {kl_type!r}")


def token_level_weights(loss_mask, global_denominator):
    """w [T] = mask / global_denominator: sum(loss * w) is the global token-level mean."""
    return loss_mask.float() / float(global_denominator)


def sequence_level_weights(loss_mask, cu_seqlens, global_num_seqs):
    """w [T] = mask / (masked length of the token's sequence * global_num_seqs).

    sum(loss * w) = sum over sequences of their masked mean, over the global sequence count.
    Sequences with no masked token contribute nothing.
    """
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()  # [N]
    seq_of_token = torch.repeat_interleave(torch.arange(len(lengths), device=loss_mask.device), lengths)
    mask = loss_mask.float()
    per_seq = torch.zeros(len(lengths), device=mask.device).index_add_(0, seq_of_token, mask)
    return mask / (per_seq.clamp_min(1.0)[seq_of_token] * float(global_num_seqs))


def ppo_kl_loss_reference(logprobs, old_logprobs, advantages, loss_weights, *, clip_low=0.2, clip_high=0.2,
                          dual_clip=None, ref_logprobs=None, kl_coef=0.0, kl_type="k3"):
    """Scalar loss sum_t w_t (pg_t + kl_coef kl_t) and metrics, through torch autograd."""
    pg = ppo_clip_loss(logprobs, old_logprobs, advantages, clip_low, clip_high, dual_clip)
    w = loss_weights.float()
    active = w != 0

    def wsum(x):  # where, not a product: masked tokens may hold inf/NaN
        return torch.where(active, x.float() * w, torch.zeros_like(w)).sum()

    loss = wsum(pg)
    kl_sum = torch.zeros((), device=logprobs.device)
    if ref_logprobs is not None:
        kl_sum = wsum(kl_penalty(logprobs, ref_logprobs, kl_type))
        loss = loss + kl_coef * kl_sum
    with torch.no_grad():
        ratio = torch.exp(logprobs - old_logprobs).float()
        unclipped = -advantages.float() * ratio
        clipped = (pg.float() != unclipped) & active
    metrics = {"pg_loss": wsum(pg).detach(), "kl": kl_sum.detach(),
               "clipped_tokens": clipped.sum().float(), "tokens": active.sum().float()}
    return loss, metrics


# ---------------------------------------------------------------- Triton kernel
def _kernels():
    @triton.jit
    def ppo_kl_fwd_kernel(lp_ptr, old_ptr, adv_ptr, w_ptr, ref_ptr, dlp_ptr, stats_ptr, T,
                          clip_low, clip_high, dual_clip, kl_coef,
                          HAS_DUAL: tl.constexpr, HAS_REF: tl.constexpr, KL_TYPE: tl.constexpr,
                          BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        valid = offs < T
        # fp32 straight after the load: bf16 math is wrong in the interpreter and imprecise anyway
        lp = tl.load(lp_ptr + offs, mask=valid, other=0.0).to(tl.float32)
        old = tl.load(old_ptr + offs, mask=valid, other=0.0).to(tl.float32)
        adv = tl.load(adv_ptr + offs, mask=valid, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + offs, mask=valid, other=0.0).to(tl.float32)
        ratio = tl.exp(lp - old)
        unclipped = -adv * ratio
        clipped = -adv * tl.minimum(tl.maximum(ratio, 1.0 - clip_low), 1.0 + clip_high)
        pg = tl.maximum(unclipped, clipped)
        # torch.maximum splits ties evenly; both branches then carry -A*r, so ">=" matches it
        dpg = tl.where(unclipped >= clipped, -adv * ratio, 0.0)
        if HAS_DUAL:
            cap = -adv * dual_clip
            use_cap = (adv < 0) & (cap < pg)
            pg = tl.where(use_cap, cap, pg)
            dpg = tl.where(use_cap, 0.0, dpg)
        kl = tl.zeros_like(lp)
        dkl = tl.zeros_like(lp)
        if HAS_REF:
            d = lp - tl.load(ref_ptr + offs, mask=valid, other=0.0).to(tl.float32)
            if KL_TYPE == 1:
                kl = d
                dkl = tl.full(d.shape, 1.0, tl.float32)
            elif KL_TYPE == 2:
                kl = 0.5 * d * d
                dkl = d
            else:
                # exp(-d) - 1 cancels for small d (no expm1 without libdevice): Taylor there
                e = tl.exp(-d)
                small = tl.abs(d) < 0.1
                kl = tl.where(small, d * d * (0.5 - d * (1.0 / 6 - d * (1.0 / 24 - d * (1.0 / 120 - d / 720)))),
                              e - 1.0 + d)
                dkl = tl.where(small, d * (1.0 - d * (0.5 - d * (1.0 / 6 - d * (1.0 / 24 - d / 120)))),
                               1.0 - e)
        # where, not w * x: masked-out tokens (prompt, padding) may hold inf/NaN log-probs
        active = (w != 0.0) & valid
        tl.store(dlp_ptr + offs, tl.where(active, w * (dpg + kl_coef * dkl), 0.0), mask=valid)
        base = stats_ptr + pid * 4
        tl.store(base + 0, tl.sum(tl.where(active, w * pg, 0.0), axis=0))
        tl.store(base + 1, tl.sum(tl.where(active, w * kl, 0.0), axis=0))
        tl.store(base + 2, tl.sum(tl.where(active & (pg != unclipped), 1.0, 0.0), axis=0))
        tl.store(base + 3, tl.sum(tl.where(active, 1.0, 0.0), axis=0))

    return ppo_kl_fwd_kernel


_KERNEL_CACHE = {}


def kernels():
    """The jitted Triton kernels of this module (built lazily so that importing needs no triton)."""
    if "ppo" not in _KERNEL_CACHE:
        _KERNEL_CACHE["ppo"] = _kernels()
    return {"ppo_kl_fwd_kernel": _KERNEL_CACHE["ppo"]}


def ppo_kl_loss_triton_fwd(logprobs, old_logprobs, advantages, loss_weights, clip_low, clip_high,
                           dual_clip, ref_logprobs, kl_coef, kl_type):
    """One kernel pass: returns (loss [], dloss/dlogprob [T] fp32, stats [4])."""
    if kl_type not in KL_TYPES:
        raise ValueError(f"kl_type must be one of {sorted(KL_TYPES)}, got {kl_type!r}")
    T = logprobs.numel()
    block = 128 if interpreting() else 1024
    nblocks = max(1, -(-T // block))
    dlp = torch.empty(T, device=logprobs.device, dtype=torch.float32)
    stats = torch.empty(nblocks, N_STATS, device=logprobs.device, dtype=torch.float32)
    has_ref = ref_logprobs is not None
    kernels()["ppo_kl_fwd_kernel"][(nblocks,)](
        logprobs, old_logprobs, advantages, loss_weights, ref_logprobs if has_ref else logprobs,
        dlp, stats, T, float(clip_low), float(clip_high),
        float(dual_clip) if dual_clip is not None else 0.0, float(kl_coef) if has_ref else 0.0,
        HAS_DUAL=dual_clip is not None, HAS_REF=has_ref, KL_TYPE=KL_TYPES[kl_type], BLOCK=block)
    totals = stats.sum(0)  # deterministic: fixed-order reduction of per-block partials, no atomics
    loss = totals[0] + (kl_coef * totals[1] if has_ref else 0.0)
    return loss, dlp, totals


class _PPOKLLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logprobs, old_logprobs, advantages, loss_weights, ref_logprobs, cfg):
        loss, dlp, totals = ppo_kl_loss_triton_fwd(logprobs, old_logprobs, advantages, loss_weights,
                                                   *cfg[:3], ref_logprobs, *cfg[3:])
        ctx.save_for_backward(dlp)
        ctx.lp_dtype = logprobs.dtype
        ctx.mark_non_differentiable(totals)
        return loss, totals

    @staticmethod
    def backward(ctx, grad_loss, _grad_totals):
        (dlp,) = ctx.saved_tensors
        return (grad_loss * dlp).to(ctx.lp_dtype), None, None, None, None, None


def ppo_kl_loss(logprobs, old_logprobs, advantages, loss_weights, *, clip_low=0.2, clip_high=0.2,
                dual_clip=None, ref_logprobs=None, kl_coef=0.0, kl_type="k3", impl="triton"):
    """sum_t w_t (pg_t + kl_coef kl_t) (module doc) and metrics; differentiable in `logprobs`.

    logprobs, old_logprobs, advantages, loss_weights, ref_logprobs: [T]. Returns
    (loss [], {"pg_loss", "kl", "clipped_tokens", "tokens"} as 0-d tensors, no host sync).
    """
    check_impl(impl, logprobs.device)
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    if impl == "torch":
        return ppo_kl_loss_reference(logprobs, old_logprobs, advantages, loss_weights,
                                     clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip,
                                     ref_logprobs=ref_logprobs, kl_coef=kl_coef, kl_type=kl_type)
    args = [t.contiguous() for t in (logprobs, old_logprobs, advantages, loss_weights)]
    ref = ref_logprobs.contiguous() if ref_logprobs is not None else None
    loss, totals = _PPOKLLoss.apply(*args, ref, (clip_low, clip_high, dual_clip, kl_coef, kl_type))
    names = ("pg_loss", "kl", "clipped_tokens", "tokens")
    return loss, {k: totals[i] for i, k in enumerate(names)}


def ppo_kl_loss_and_grad(logprobs, old_logprobs, advantages, loss_weights, *, clip_low=0.2,
                         clip_high=0.2, dual_clip=None, ref_logprobs=None, kl_coef=0.0,
                         kl_type="k3", return_totals=False):
    """(loss [], dloss/dlogprob [T] fp32) in one kernel pass, no autograd: the fused loss head
    (see logprob.py) feeds this gradient straight into its LM-head backward. `return_totals`
    adds the kernel's partial sums [4]: w*pg, w*kl, #clipped, #weighted tokens."""
    with torch.no_grad():
        loss, dlp, totals = ppo_kl_loss_triton_fwd(logprobs.contiguous(), old_logprobs.contiguous(),
                                              advantages.contiguous(), loss_weights.contiguous(),
                                              clip_low, clip_high, dual_clip,
                                              None if ref_logprobs is None else ref_logprobs.contiguous(),
                                              kl_coef, kl_type)
    return (loss, dlp, totals) if return_totals else (loss, dlp)
