"""Role-masked group advantages: segmented per (group, role) mean (optional std), broadcast to tokens.

Per trajectory n in segment k = (group_ids[n], role_ids[n]):
    adv[n] = (r[n] - mean_k)                       or  (r[n] - mean_k) / (std_k + eps)
with std_k the population std of the segment's rewards. Per token t of sequence n
(cu_seqlens[n] <= t < cu_seqlens[n+1]): token_adv[t] = adv[n] * loss_mask[t].
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._dispatch import check_impl, interpreting


# ---------------------------------------------------------------- torch reference
def group_advantages(rewards, group_ids, role_ids, scale_by_std=False, eps=1e-6):
    """Per-trajectory advantages [N] (module doc), from rewards/group_ids/role_ids [N]."""
    keys = torch.stack([group_ids.long(), role_ids.long()], dim=1)
    _, seg = torch.unique(keys, dim=0, return_inverse=True)  # [N] segment index
    k = int(seg.max()) + 1 if seg.numel() else 0
    r = rewards.double()
    count = torch.zeros(k, dtype=r.dtype, device=r.device).index_add_(0, seg, torch.ones_like(r))
    mean = torch.zeros_like(count).index_add_(0, seg, r) / count
    adv = r - mean[seg]
    if scale_by_std:
        var = torch.zeros_like(count).index_add_(0, seg, adv * adv) / count
        adv = adv / (var.sqrt()[seg] + eps)
    return adv.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def broadcast_to_tokens(adv, cu_seqlens, loss_mask):
    """token_adv [T] = adv[seq(t)] * loss_mask[t], from adv [N] and cu_seqlens [N+1]."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return torch.repeat_interleave(adv, lengths) * loss_mask.to(adv.dtype)


def token_advantages_reference(rewards, group_ids, role_ids, cu_seqlens, loss_mask,
                               scale_by_std=False, eps=1e-6):
    """(per-trajectory adv [N], per-token adv [T]) through the torch reference."""
    adv = group_advantages(rewards, group_ids, role_ids, scale_by_std, eps)
    return adv, broadcast_to_tokens(adv, cu_seqlens, loss_mask)


# ---------------------------------------------------------------- Triton kernels
def _kernels():
    @triton.jit
    def segment_sum_kernel(x_ptr, seg_ptr, mean_ptr, out_ptr, N, CENTRED_SQUARES: tl.constexpr,
                           BLOCK: tl.constexpr):
        # segments are few and trajectories per step are thousands: fp32 atomics are cheap here
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        valid = offs < N
        x = tl.load(x_ptr + offs, mask=valid, other=0.0).to(tl.float32)
        seg = tl.load(seg_ptr + offs, mask=valid, other=0)
        if CENTRED_SQUARES:
            # two-pass variance: sum (x - mean)^2 avoids E[x^2] - E[x]^2 cancellation
            d = x - tl.load(mean_ptr + seg, mask=valid, other=0.0)
            x = d * d
        tl.atomic_add(out_ptr + seg, x, mask=valid)

    @triton.jit
    def traj_adv_kernel(r_ptr, seg_ptr, mean_ptr, sq_ptr, count_ptr, adv_ptr, N, eps,
                        SCALE: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        valid = offs < N
        r = tl.load(r_ptr + offs, mask=valid, other=0.0).to(tl.float32)
        seg = tl.load(seg_ptr + offs, mask=valid, other=0)
        adv = r - tl.load(mean_ptr + seg, mask=valid, other=0.0)
        if SCALE:
            var = tl.load(sq_ptr + seg, mask=valid, other=0.0) / tl.load(count_ptr + seg, mask=valid, other=1.0)
            adv = adv / (tl.sqrt(var) + eps)
        tl.store(adv_ptr + offs, adv, mask=valid)

    @triton.jit
    def token_broadcast_kernel(adv_ptr, cu_ptr, mask_ptr, out_ptr, T, N,
                               SEARCH_STEPS: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        valid = offs < T
        # branch-free binary search: largest n with cu_seqlens[n] <= t, in ceil(log2(N+1)) steps
        lo = tl.zeros([BLOCK], dtype=tl.int32)
        hi = tl.zeros([BLOCK], dtype=tl.int32) + N
        for _ in tl.static_range(SEARCH_STEPS):
            mid = (lo + hi + 1) // 2
            start = tl.load(cu_ptr + mid, mask=valid & (mid <= N), other=0)
            go_right = start <= offs
            lo = tl.where(go_right, mid, lo)
            hi = tl.where(go_right, hi, mid - 1)
        adv = tl.load(adv_ptr + lo, mask=valid & (lo < N), other=0.0)
        m = tl.load(mask_ptr + offs, mask=valid, other=0).to(tl.float32)
        tl.store(out_ptr + offs, adv * m, mask=valid)

    return {"segment_sum_kernel": segment_sum_kernel, "traj_adv_kernel": traj_adv_kernel,
            "token_broadcast_kernel": token_broadcast_kernel}


_KERNEL_CACHE: dict = {}


def kernels():
    """The jitted Triton kernels of this module (built lazily so that importing needs no triton)."""
    if not _KERNEL_CACHE:
        _KERNEL_CACHE.update(_kernels())
    return _KERNEL_CACHE


def _segments(group_ids, role_ids):
    """Dense segment index [N] per (group, role) pair, and the segment count K.

    torch.unique syncs with the host once (to size K); advantages are computed once per step.
    """
    keys = torch.stack([group_ids.long(), role_ids.long()], dim=1)
    _, seg = torch.unique(keys, dim=0, return_inverse=True)
    return seg.to(torch.int32).contiguous(), int(seg.max()) + 1 if seg.numel() else 0


def token_advantages_triton(rewards, group_ids, role_ids, cu_seqlens, loss_mask,
                            scale_by_std=False, eps=1e-6):
    """Triton version of `token_advantages_reference`; returns fp32 (adv [N], token_adv [T])."""
    k = kernels()
    N, T = rewards.numel(), loss_mask.numel()
    dev = rewards.device
    block = 128 if interpreting() else 1024
    seg, K = _segments(group_ids, role_ids)
    r = rewards.contiguous()
    ones = torch.ones(N, device=dev, dtype=torch.float32)
    count = torch.zeros(K, device=dev, dtype=torch.float32)
    total = torch.zeros(K, device=dev, dtype=torch.float32)
    grid_n = (max(1, -(-N // block)),)
    k["segment_sum_kernel"][grid_n](ones, seg, count, count, N, CENTRED_SQUARES=False, BLOCK=block)
    k["segment_sum_kernel"][grid_n](r, seg, total, total, N, CENTRED_SQUARES=False, BLOCK=block)
    mean = total / count
    sq = torch.zeros(K, device=dev, dtype=torch.float32)
    if scale_by_std:
        k["segment_sum_kernel"][grid_n](r, seg, mean, sq, N, CENTRED_SQUARES=True, BLOCK=block)
    adv = torch.empty(N, device=dev, dtype=torch.float32)
    k["traj_adv_kernel"][grid_n](r, seg, mean, sq, count, adv, N, float(eps), SCALE=scale_by_std,
                                 BLOCK=block)
    out = torch.empty(T, device=dev, dtype=torch.float32)
    steps = max(1, int(N).bit_length())
    k["token_broadcast_kernel"][(max(1, -(-T // block)),)](
        adv, cu_seqlens.to(torch.int32).contiguous(), loss_mask.contiguous(), out, T, N,
        SEARCH_STEPS=steps, BLOCK=block)
    return adv, out


def token_advantages(rewards, group_ids, role_ids, cu_seqlens, loss_mask, *, scale_by_std=False,
                     eps=1e-6, impl="triton"):
    """(adv [N], token_adv [T]): group advantages per (group, role), broadcast under the mask.

    rewards, group_ids, role_ids: [N]; cu_seqlens: [N+1] packed-token offsets; loss_mask: [T].
    """
    check_impl(impl, rewards.device)
    if cu_seqlens.numel() != rewards.numel() + 1:
        raise ValueError(f"cu_seqlens has {cu_seqlens.numel()} entries, expected N+1 = {rewards.numel() + 1}")
    if impl == "torch":
        return token_advantages_reference(rewards, group_ids, role_ids, cu_seqlens, loss_mask,
                                          scale_by_std, eps)
    return token_advantages_triton(rewards, group_ids, role_ids, cu_seqlens, loss_mask,
                                   scale_by_std, eps)
