"""PRCO's algorithm core as pure tensor functions: advantages, Solver-group selection, losses,
and the GRPO/DAPO baselines. The Triton loss kernels are checked against these."""
from prco_mega.algo.advantages import broadcast_to_tokens, group_advantages, segment_ids
from prco_mega.algo.baselines import dapo_keep_mask, grpo_advantages, overlong_penalty
from prco_mega.algo.losses import (
    aggregate,
    kl_penalty,
    nll_loss,
    ppo_clip_loss,
    prco_loss,
    truncated_is_weights,
)
from prco_mega.algo.selection import (
    has_signal,
    select_solver_groups,
    select_solver_groups_batched,
)

__all__ = [
    "aggregate",
    "broadcast_to_tokens",
    "dapo_keep_mask",
    "group_advantages",
    "grpo_advantages",
    "has_signal",
    "kl_penalty",
    "nll_loss",
    "overlong_penalty",
    "ppo_clip_loss",
    "prco_loss",
    "segment_ids",
    "select_solver_groups",
    "select_solver_groups_batched",
    "truncated_is_weights",
]
