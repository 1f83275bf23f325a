"""PPO-clip surrogate, KL estimators, loss aggregation and the combined PRCO loss.

All per-token functions are unreduced and elementwise ([T] in, [T] out): they are the references
the fused Triton loss kernels are checked against. Reduction happens only in `aggregate`, always
with a denominator computed for the whole step.
"""
from __future__ import annotations

import torch
from torch import Tensor

from prco_mega.types import Role

KL_KINDS = ("k1", "k2", "k3")
LEVELS = ("token", "sequence")


def ppo_clip_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-token PPO-clip loss (to minimise) with separate low/high clip and optional dual clip.

    `rho = exp(logprobs - old_logprobs)`,
    `loss = max(-A * rho, -A * clamp(rho, 1 - clip_low, 1 + clip_high))`;
    with dual clip `c > 1`, for `A < 0`: `loss = min(loss, -A * c)` (bounds the loss when rho
    explodes on a negative advantage).

    The loss is computed as `where(clipped, constant, -A * rho)`, so its gradient is exactly
    `d loss / d logprobs = -A * rho * (1 - clipped)`; `clipped` is True where a clip branch
    is strictly chosen: rho > 1 + clip_high with A > 0, rho < 1 - clip_low with A < 0, or the dual
    clip with A < 0 and -A * rho' > -A * c. At the clip boundaries the value is continuous.

    logprobs, old_logprobs, advantages  # [T]
    returns (loss [T], clipped [T] bool)
    """
    if not 0.0 <= clip_low < 1.0 or clip_high < 0.0:
        raise ValueError(f"need 0 <= clip_low ({clip_low}) < 1 and clip_high ({clip_high}) >= 0")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip ({dual_clip}) must be > 1")
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clip_value = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    clipped = clip_value > unclipped
    loss = torch.where(clipped, clip_value, unclipped)
    if dual_clip is not None:
        dual_value = -advantages * dual_clip
        dual = (advantages < 0) & (loss > dual_value)
        loss = torch.where(dual, dual_value, loss)
        clipped = clipped | dual
    return loss, clipped


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str) -> Tensor:
    """Per-token estimator of KL(pi || pi_ref) from log-probs of tokens sampled from pi.

    With `delta = logprobs - ref_logprobs`:
    - `k1 = delta` (unbiased, can be negative),
    - `k2 = delta^2 / 2` (biased, low variance),
    - `k3 = exp(-delta) - 1 + delta` (Schulman's unbiased, non-negative estimator).
    All are 0 at `delta = 0`.

    logprobs, ref_logprobs  # [T]
    returns                 # [T]
    """
    delta = logprobs - ref_logprobs
    if kind == "k1":
        return delta
    if kind == "k2":
        return 0.5 * delta.square()
    if kind == "k3":
        # expm1 keeps precision for small delta, where exp(-delta) - 1 cancels.
        return torch.expm1(-delta) + delta
    raise ValueError(f"kl kind {kind!r} is not one of {KL_KINDS}")


def truncated_is_weights(learner_logprobs: Tensor, rollout_logprobs: Tensor, cap: float) -> Tensor:
    """Truncated importance-sampling weights for the rollout/learner mismatch (TIS).

    `w = min(exp(learner_logprobs - rollout_logprobs), cap)`, a constant (no gradient): multiply
    the per-token policy loss by it when `old_logprobs` are the learner's recompute and the
    samples came from a rollout engine whose numerics differ.

    learner_logprobs, rollout_logprobs  # [T]
    returns                             # [T]
    """
    if cap <= 0:
        raise ValueError(f"TIS cap ({cap}) must be > 0")
    return torch.exp(learner_logprobs - rollout_logprobs).clamp(max=cap).detach()


def _masked(values: Tensor, loss_mask: Tensor) -> Tensor:
    # where, not a product: values at masked positions (prompt tokens, padding) may be inf/NaN.
    return torch.where(loss_mask != 0, values * loss_mask, torch.zeros_like(values))


def aggregate(
    values: Tensor,
    loss_mask: Tensor,
    *,
    denominator: float | Tensor,
    level: str = "token",
    cu_seqlens: Tensor | None = None,
) -> Tensor:
    """Reduce per-token values to this micro-batch's share of the step loss.

    - `"token"`: `sum_t values[t] * mask[t] / denominator`, denominator = the number of loss
      tokens in the WHOLE step (every micro-batch, every data-parallel rank).
    - `"sequence"`: `sum_n (masked mean of values within sequence n) / denominator`,
      denominator = the number of sequences in the whole step. A sequence with no loss token
      contributes 0.

    Why the denominator is global: the step loss is a sum of these shares over micro-batches and
    DP ranks (gradients are accumulated, then summed/averaged by DP). A local mean per micro-batch
    would weight a token by 1/(its micro-batch's count), so how the batch is split (micro-batch
    size, DP degree, packing) would change the loss and its gradient. With a global denominator
    every token (or sequence) weighs the same however the step is split.

    values, loss_mask  # [T]
    cu_seqlens         # [N+1], needed for level="sequence"
    returns            # [] scalar
    """
    if level == "token":
        return _masked(values, loss_mask).sum() / denominator
    if level != "sequence":
        raise ValueError(f"aggregation level {level!r} is not one of {LEVELS}")
    if cu_seqlens is None:
        raise ValueError('level="sequence" needs cu_seqlens')
    num_seqs = cu_seqlens.numel() - 1
    lengths_N = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)
    seq_T = torch.repeat_interleave(
        torch.arange(num_seqs, device=values.device), lengths_N, output_size=values.numel()
    )
    mask = loss_mask.to(values.dtype)
    sums_N = torch.zeros(num_seqs, dtype=values.dtype, device=values.device)
    sums_N = sums_N.index_add(0, seq_T, _masked(values, mask))
    counts_N = torch.zeros_like(sums_N).index_add(0, seq_T, mask)
    return (sums_N / counts_N.clamp(min=1.0)).sum() / denominator


def _role_name(role: int) -> str:
    try:
        return Role(int(role)).name.lower()
    except ValueError:
        return f"role{int(role)}"


def prco_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    loss_mask: Tensor,
    role_ids: Tensor,
    role_denominators: dict[int, float],
    *,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None = None,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_kind: str = "k3",
    level: str = "token",
    cu_seqlens: Tensor | None = None,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """This micro-batch's share of the PRCO loss, summed over roles.

    `L = sum_r [ agg_r(w * L_clip) + kl_coef * agg_r(KL) ]`, where `agg_r` is `aggregate` over
    the loss tokens of role r with that role's global denominator `role_denominators[r]`, `w` the
    optional truncated-IS weights. With roles {SOLVER, OBSERVER} this is PRCO's
    `L_clip(A_S) + L_clip(A_O)`; with the single role SINGLE it is GRPO/DAPO.

    Tokens of a role missing from `role_denominators`, or whose denominator is 0, enter no loss;
    the metric `unassigned_tokens` counts them (it must be 0 in a correct batch).

    Metrics are detached tensors (no host sync), each aggregated like the loss with the same
    global denominators, so summing them over micro-batches and ranks gives the step's value:
    `{role}/pg_loss`, `{role}/clip_frac`, `{role}/ratio_mean`, `{role}/kl` (when ref_logprobs is
    given), and `pg_loss`, `kl_loss`, `unassigned_tokens`.

    logprobs, old_logprobs, advantages, loss_mask, role_ids  # [T]
    ref_logprobs, is_weights                                 # [T] or None
    cu_seqlens                                               # [N+1], for level="sequence"
    """
    if kl_coef != 0.0 and ref_logprobs is None:
        raise ValueError(f"kl_coef ({kl_coef}) != 0 needs ref_logprobs")
    pg_T, clipped_T = ppo_clip_loss(
        logprobs, old_logprobs, advantages,
        clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip,
    )
    if is_weights is not None:
        pg_T = pg_T * is_weights
    kl_T = None if ref_logprobs is None else kl_penalty(logprobs, ref_logprobs, kl_kind)
    ratio_T = torch.exp(logprobs - old_logprobs).detach()

    total = logprobs.new_zeros(())
    metrics: dict[str, Tensor] = {"pg_loss": logprobs.new_zeros(()), "kl_loss": logprobs.new_zeros(())}
    assigned = torch.zeros_like(loss_mask, dtype=torch.bool)
    for role, denominator in role_denominators.items():
        if denominator < 0:
            raise ValueError(f"role {role} has a negative loss denominator ({denominator})")
        if denominator == 0:  # role absent from the whole step
            continue
        in_role = role_ids == int(role)
        assigned = assigned | in_role
        mask = loss_mask * in_role.to(loss_mask.dtype)

        def agg(values: Tensor, mask: Tensor = mask, denominator: float = denominator) -> Tensor:
            return aggregate(values, mask, denominator=denominator, level=level, cu_seqlens=cu_seqlens)

        name = _role_name(role)
        pg = agg(pg_T)
        total = total + pg
        metrics[f"{name}/pg_loss"] = pg.detach()
        metrics[f"{name}/clip_frac"] = agg(clipped_T.to(ratio_T.dtype))
        metrics[f"{name}/ratio_mean"] = agg(ratio_T)
        metrics["pg_loss"] = metrics["pg_loss"] + pg.detach()
        if kl_T is not None:
            kl = agg(kl_T)
            if kl_coef != 0.0:
                total = total + kl_coef * kl
            metrics[f"{name}/kl"] = kl.detach()
            metrics["kl_loss"] = metrics["kl_loss"] + kl_coef * kl.detach()
    metrics["unassigned_tokens"] = ((loss_mask != 0) & ~assigned).sum()
    return total, metrics


def nll_loss(
    logprobs: Tensor,
    loss_mask: Tensor,
    role_ids: Tensor,
    role_denominators: dict[int, float],
    *,
    level: str = "token",
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Supervised (warm-start) loss: `L = sum_r agg_r(-logprob)`, the mean negative log-likelihood
    of each role's response tokens with the same global per-role denominators as `prco_loss`, so
    micro-batching and data parallelism never change it. Metrics: `{role}/nll`, `nll`.

    logprobs, loss_mask, role_ids  # [T]
    """
    total = logprobs.new_zeros(())
    metrics: dict[str, Tensor] = {}
    for role, denominator in role_denominators.items():
        if denominator <= 0:
            continue
        mask = loss_mask * (role_ids == int(role)).to(loss_mask.dtype)
        nll = aggregate(-logprobs, mask, denominator=denominator, level=level, cu_seqlens=cu_seqlens)
        total = total + nll
        metrics[f"{_role_name(role)}/nll"] = nll.detach()
    metrics["nll"] = total.detach()
    return total, metrics
