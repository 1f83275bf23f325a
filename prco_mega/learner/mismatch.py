"""Train/rollout mismatch: how far the learner's log-probs are from the rollout engine's on the
tokens that enter the loss (a known pain point of every RL stack: different kernels, dtypes and
batching make the "same" policy give different numbers).

Pure tensor functions. The learner computes the additive statistics (`mismatch_sums`) from the
log-probs of its training forward (or of the one pre-step pass when a step has several
mini-batches), reduces them with the step's other metrics, and `finish_mismatch` turns them into
means; `logprob_mismatch` does both for one set of tokens.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from prco_mega.types import Role


def _role_name(role: int) -> str:
    try:
        return Role(int(role)).name.lower()
    except ValueError:
        return f"role{int(role)}"


def abs_logprob_diff(learner_logprobs: Tensor, rollout_logprobs: Tensor) -> Tensor:
    """d[t] = |learner[t] - rollout[t]| in fp32.

    learner_logprobs, rollout_logprobs  # [T]
    returns                             # [T]
    """
    if learner_logprobs.shape != rollout_logprobs.shape:
        raise ValueError(f"learner log-probs {tuple(learner_logprobs.shape)} and rollout log-probs "
                         f"{tuple(rollout_logprobs.shape)} must have the same shape")
    return (learner_logprobs.float() - rollout_logprobs.float()).abs()


def mismatch_kl_k3(learner_logprobs: Tensor, rollout_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(rollout || learner) on tokens sampled by the rollout engine.

    With rho = exp(learner - rollout): k3[t] = rho - 1 - log rho >= 0, unbiased for the KL and
    0 exactly when the two log-probs agree. This is the token-level stat the controller logs.

    learner_logprobs, rollout_logprobs  # [T]
    returns                             # [T]
    """
    log_rho = learner_logprobs.float() - rollout_logprobs.float()
    # expm1 keeps precision for the tiny differences a healthy stack has (1e-6 and below)
    return torch.expm1(log_rho) - log_rho


def mismatch_sums(learner_logprobs: Tensor, rollout_logprobs: Tensor, loss_mask: Tensor,
                  role_ids: Tensor, roles: Iterable[int]) -> dict[str, Tensor]:
    """Additive mismatch statistics over loss tokens (loss_mask != 0), overall and per role in
    `roles`: sums and counts add over micro-batches and data-parallel ranks, `max_abs` takes the
    max. `finish_mismatch` turns the reduced values into means. 0-d tensors, no host sync: every
    micro-batch of a step reports the same keys (pass the step's roles, e.g. those with a loss
    denominator), with zeros where a role has no token.

    Keys: "mismatch/{abs_sum,k3_sum,tokens,max_abs}", "mismatch/<role>/{abs_sum,tokens,max_abs}".
    Values at masked positions are ignored even when they are inf or NaN.

    learner_logprobs, rollout_logprobs, loss_mask, role_ids  # [T]
    """
    for name, t in (("loss_mask", loss_mask), ("role_ids", role_ids)):
        if t.shape != learner_logprobs.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, log-probs have "
                             f"{tuple(learner_logprobs.shape)}")
    keep = loss_mask != 0
    diff = torch.where(keep, abs_logprob_diff(learner_logprobs, rollout_logprobs), 0.0)
    k3 = torch.where(keep, mismatch_kl_k3(learner_logprobs, rollout_logprobs), 0.0)
    out = _sums(diff, keep, "mismatch")
    out["mismatch/k3_sum"] = k3.sum()
    for role in roles:
        out.update(_sums(diff, keep & (role_ids == int(role)), f"mismatch/{_role_name(role)}"))
    return out


def _sums(diff: Tensor, keep: Tensor, prefix: str) -> dict[str, Tensor]:
    """Sum, count and max of `diff` [T] (>= 0, zero off `keep`) over `keep` [T]."""
    selected = torch.where(keep, diff, 0.0)
    return {f"{prefix}/abs_sum": selected.sum(), f"{prefix}/tokens": keep.sum().to(torch.float32),
            f"{prefix}/max_abs": selected.max() if selected.numel() else selected.new_zeros(())}


def finish_mismatch(metrics: dict[str, float]) -> dict[str, float]:
    """`metrics` with each reduced `mismatch_sums` prefix turned into its means:
    mean_abs = abs_sum / tokens, kl_k3 = k3_sum / tokens; a prefix with no token is dropped."""
    out = {k: v for k, v in metrics.items() if not k.startswith("mismatch/")}
    for key, tokens in metrics.items():
        if not (key.startswith("mismatch/") and key.endswith("/tokens")) or tokens <= 0:
            continue
        prefix = key.removesuffix("/tokens")
        out[f"{prefix}/mean_abs"] = metrics[f"{prefix}/abs_sum"] / tokens
        out[f"{prefix}/max_abs"] = metrics[f"{prefix}/max_abs"]
        out[key] = tokens
        if f"{prefix}/k3_sum" in metrics:
            out[f"{prefix}/kl_k3"] = metrics[f"{prefix}/k3_sum"] / tokens
    return out


def logprob_mismatch(learner_logprobs: Tensor, rollout_logprobs: Tensor, loss_mask: Tensor,
                     role_ids: Tensor) -> dict[str, float]:
    """Mismatch metrics of one set of tokens (`mismatch_sums` then `finish_mismatch`):

      mean_abs = sum_{t in S} d[t] / |S|,   max_abs = max_{t in S} d[t],   tokens = |S|,
      kl_k3    = sum_{t in S} k3[t] / |S|  (see `mismatch_kl_k3`),
    with d[t] = |learner - rollout| over the loss tokens S, overall and per role present.

    learner_logprobs, rollout_logprobs, loss_mask, role_ids  # [T]
    """
    roles = torch.unique(role_ids[loss_mask != 0]).tolist() if role_ids.shape == loss_mask.shape else []
    sums = mismatch_sums(learner_logprobs, rollout_logprobs, loss_mask, role_ids, roles)
    return finish_mismatch({k: float(v) for k, v in sums.items()})
