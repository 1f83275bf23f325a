"""Train/rollout mismatch: how far the learner's log-probs are from the rollout engine's on the
tokens that enter the loss (a known pain point of every RL stack: different kernels, dtypes and
batching make the "same" policy give different numbers).

Pure tensor functions; the controller feeds them the step's packed tensors (`TrainBatch`) and the
learner's recompute (`learner.train_step.compute_logprobs`). Metrics are 0-d tensors; the only
host syncs list the roles present (a role with no loss token in the step gets no keys).
"""
from __future__ import annotations

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


def logprob_mismatch(learner_logprobs: Tensor, rollout_logprobs: Tensor, loss_mask: Tensor,
                     role_ids: Tensor) -> dict[str, Tensor]:
    """Mismatch metrics over loss tokens (loss_mask != 0), overall and per role.

    For a token set S (all loss tokens, or those of role r), with d[t] = |learner - rollout|:
      mean_abs = sum_{t in S} d[t] / |S|,   max_abs = max_{t in S} d[t],   tokens = |S|,
      kl_k3    = sum_{t in S} k3[t] / |S|  (see `mismatch_kl_k3`).
    Keys: "mismatch/{mean_abs,max_abs,kl_k3,tokens}" and "mismatch/<role>/{mean_abs,max_abs,
    tokens}" with <role> = observer / solver / single. Values at masked positions are ignored
    even when they are inf or NaN (prompt tokens carry no rollout log-prob).

    learner_logprobs, rollout_logprobs, loss_mask, role_ids  # [T]
    """
    for name, t in (("loss_mask", loss_mask), ("role_ids", role_ids)):
        if t.shape != learner_logprobs.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, log-probs have "
                             f"{tuple(learner_logprobs.shape)}")
    keep = loss_mask != 0
    diff = torch.where(keep, abs_logprob_diff(learner_logprobs, rollout_logprobs), 0.0)
    k3 = torch.where(keep, mismatch_kl_k3(learner_logprobs, rollout_logprobs), 0.0)
    out = _masked_stats(diff, keep, "mismatch")
    if "mismatch/tokens" in out:
        out["mismatch/kl_k3"] = k3.sum() / out["mismatch/tokens"]
    for role in torch.unique(role_ids[keep]).tolist():
        out.update(_masked_stats(diff, keep & (role_ids == role), f"mismatch/{_role_name(role)}"))
    return out


def _masked_stats(diff: Tensor, keep: Tensor, prefix: str) -> dict[str, Tensor]:
    """mean/max of `diff` [T] over `keep` [T]; {} when nothing is kept."""
    count = keep.sum()
    if not bool(count):
        return {}
    selected = diff[keep]
    return {f"{prefix}/mean_abs": selected.sum() / count, f"{prefix}/max_abs": selected.max(),
            f"{prefix}/tokens": count.to(torch.float32)}
