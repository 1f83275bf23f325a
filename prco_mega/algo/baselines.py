"""GRPO and DAPO on one outcome reward per trajectory (role SINGLE): the ablation baselines.

Both use `prco_loss` with the single role; what differs is the advantage, the filtering of groups
and the clip/aggregation settings (their presets are the entries of `prco_mega.algo.registry`).
"""
from __future__ import annotations

import torch
from torch import Tensor

from prco_mega.algo.advantages import group_advantages, segment_ids


def grpo_advantages(
    rewards: Tensor, group_ids: Tensor, scale_by_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """GRPO advantage: `A_i = (r_i - mean_g r) / (std_g r + eps)` over the group g of i.

    rewards    # [N]
    group_ids  # [N] int64
    returns    # [N]
    """
    return group_advantages(
        rewards, group_ids, torch.zeros_like(group_ids), scale_by_std=scale_by_std, eps=eps
    )


def dapo_keep_mask(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """DAPO dynamic sampling: keep trajectories whose group's rewards are not all equal.

    A group with equal rewards has zero advantage for every member and only dilutes the batch.

    rewards    # [N]
    group_ids  # [N] int64
    returns    # [N] bool
    """
    segment_N, num_segments = segment_ids(group_ids)
    hi_S = torch.full((num_segments,), -torch.inf, dtype=rewards.dtype, device=rewards.device)
    lo_S = torch.full((num_segments,), torch.inf, dtype=rewards.dtype, device=rewards.device)
    hi_S = hi_S.scatter_reduce(0, segment_N, rewards, reduce="amax")
    lo_S = lo_S.scatter_reduce(0, segment_N, rewards, reduce="amin")
    return (hi_S != lo_S)[segment_N]


def overlong_penalty(lengths: Tensor, max_length: int, cache_length: int) -> Tensor:
    """DAPO soft overlong punishment added to the reward of a response of length L.

    `0` if `L <= max_length - cache_length`; `(max_length - cache_length - L) / cache_length`
    (linear from 0 to -1) up to `max_length`; `-1` beyond.

    lengths  # [N] response lengths in tokens
    returns  # [N] float32
    """
    if not 0 < cache_length <= max_length:
        raise ValueError(f"need 0 < cache_length ({cache_length}) <= max_length ({max_length})")
    excess = lengths.to(torch.float32) - (max_length - cache_length)
    return (-excess / cache_length).clamp(min=-1.0, max=0.0)
