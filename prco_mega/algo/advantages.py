"""Per-role group advantages and their broadcast to tokens.

PRCO centres each role's rewards within its own group: the Observer group is the `G_O` captions of
one prompt, the Solver group is the `G_S` answers to the one selected caption. A segment below is a
(group id, role id) pair, so both roles can share group ids without mixing.
"""
from __future__ import annotations

import torch
from torch import Tensor


def segment_ids(*keys: Tensor) -> tuple[Tensor, int]:
    """Dense segment index of each row of the stacked integer `keys` (each [N]).

    Returns (`segment_N` int64 in [0, S), S). Ids need not be contiguous or sorted; rows with
    equal keys share a segment.
    """
    stacked_NK = torch.stack([k.to(torch.int64) for k in keys], dim=1)
    unique_SK, segment_N = torch.unique(stacked_NK, dim=0, return_inverse=True)
    return segment_N, unique_SK.shape[0]


def segment_sum(values: Tensor, segment_N: Tensor, num_segments: int) -> Tensor:
    """[S] sum of `values` [N] within each segment."""
    out = torch.zeros(num_segments, dtype=values.dtype, device=values.device)
    return out.index_add_(0, segment_N, values)


def group_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    role_ids: Tensor,
    *,
    scale_by_std: bool = False,
    eps: float = 1e-6,
) -> Tensor:
    """Mean-centred advantages per (group, role) segment.

    `A_i = r_i - mean_{j in seg(i)} r_j`, and with `scale_by_std`
    `A_i = (r_i - mean_seg r) / (std_seg r + eps)` with the population std (unbiased=False), so a
    group whose rewards are all equal gets advantage 0 either way.

    rewards    # [N] float, one per trajectory
    group_ids  # [N] int64, any values (not necessarily contiguous or sorted)
    role_ids   # [N] int64 (`Role` values)
    returns    # [N] advantages, in rewards' dtype (at least float32)
    """
    if not (rewards.shape == group_ids.shape == role_ids.shape) or rewards.dim() != 1:
        raise ValueError(
            f"rewards {tuple(rewards.shape)}, group_ids {tuple(group_ids.shape)} and role_ids "
            f"{tuple(role_ids.shape)} must be 1-D of the same length"
        )
    dtype = torch.promote_types(rewards.dtype, torch.float32)
    rewards = rewards.to(dtype)
    segment_N, num_segments = segment_ids(group_ids, role_ids)
    count_S = segment_sum(torch.ones_like(rewards), segment_N, num_segments)
    mean_S = segment_sum(rewards, segment_N, num_segments) / count_S
    centred_N = rewards - mean_S[segment_N]
    if scale_by_std:
        # Two-pass variance (centre first) avoids the cancellation of E[r^2] - E[r]^2.
        var_S = segment_sum(centred_N.square(), segment_N, num_segments) / count_S
        centred_N = centred_N / (var_S.sqrt()[segment_N] + eps)
    return centred_N


def broadcast_to_tokens(seq_values: Tensor, cu_seqlens: Tensor, loss_mask: Tensor) -> Tensor:
    """Give every token its sequence's value, zeroed where the token is not in the loss.

    `out[t] = seq_values[n(t)] * loss_mask[t]` where `cu_seqlens[n] <= t < cu_seqlens[n+1]`.

    seq_values  # [N]
    cu_seqlens  # [N+1] cumulative sequence lengths, cu_seqlens[0] = 0, cu_seqlens[-1] = T
    loss_mask   # [T] float (or bool) 1 on response tokens
    returns     # [T] in seq_values' dtype
    """
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() != seq_values.numel() + 1:
        raise ValueError(
            f"cu_seqlens has shape {tuple(cu_seqlens.shape)}; expected [{seq_values.numel() + 1}] "
            f"for {seq_values.numel()} sequence values"
        )
    lengths_N = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)
    # output_size keeps repeat_interleave from reading the lengths back to the host.
    per_token = torch.repeat_interleave(seq_values, lengths_N, output_size=loss_mask.numel())
    return per_token * loss_mask.to(seq_values.dtype)
