"""Per-token log-probs of target tokens from vocab-parallel logits, with an explicit TP group.

    logp[t] = z[t, y_t] - log sum_v exp(z[t, v])

computed without gathering the vocab: each TP rank holds columns [r*V/tp, (r+1)*V/tp) of z; the
max, the sum of exponentials and the picked logit are all-reduced over `tp_group`. Gradients follow
Megatron's convention: every TP rank holds the full (identical) result, and each rank's backward
produces the gradient of its own vocab shard only (the all-reduce passes gradients through as is).
Unlike Megatron's `vocab_parallel_cross_entropy`, the input logits are not modified.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class _AllReduceSum(torch.autograd.Function):
    """Sum over `group` in forward; identity in backward (each rank owns its own shard's grad)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def _all_reduce_sum(x: torch.Tensor, group) -> torch.Tensor:
    if group is None or dist.get_world_size(group) == 1:
        return x
    return _AllReduceSum.apply(x, group)


def vocab_parallel_logprobs(logits: torch.Tensor, target: torch.Tensor,
                            tp_group=None) -> torch.Tensor:
    """log p(target) [...]: `logits` [..., V/tp] (this rank's vocab shard), `target` [...] int64
    global vocab ids. fp32 math whatever the logits dtype. `tp_group=None` means no TP."""
    logits = logits.float()
    parallel = tp_group is not None and dist.get_world_size(tp_group) > 1
    with torch.no_grad():  # the shift cancels in the formula; it only keeps exp() finite
        shift = logits.max(dim=-1).values
        if parallel:
            dist.all_reduce(shift, op=dist.ReduceOp.MAX, group=tp_group)
    shifted = logits - shift.unsqueeze(-1)
    sum_exp = _all_reduce_sum(shifted.exp().sum(dim=-1), tp_group)
    v_local = logits.shape[-1]
    rank = dist.get_rank(tp_group) if parallel else 0
    local = target - rank * v_local
    owned = (local >= 0) & (local < v_local)
    picked = shifted.gather(-1, local.clamp(0, v_local - 1).unsqueeze(-1)).squeeze(-1)
    picked = _all_reduce_sum(torch.where(owned, picked, torch.zeros_like(picked)), tp_group)
    return picked - sum_exp.log()


def shifted_targets(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets [B, S], valid [B, S]): position t predicts tokens[t+1]; the last one has none."""
    targets = torch.roll(tokens, shifts=-1, dims=-1)
    valid = torch.ones_like(tokens, dtype=torch.bool)
    valid[..., -1] = False
    return targets, valid
