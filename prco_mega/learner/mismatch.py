"""Train/rollout mismatch: how far the learner's log-probs are from the rollout engine's on the
tokens that enter the loss (a known pain point of every RL stack: different kernels, dtypes and
batching make the "same" policy give different numbers), what the off-policy correction did to
those tokens, and how old the step's samples are.

Pure tensor functions. The learner computes the additive statistics (`mismatch_sums`,
`correction_sums`, `lag_counts`) from the log-probs of its training forward (or of the one
pre-step pass when a step has several mini-batches), reduces them with the step's other metrics
(the one host sync of the step), and `finish_mismatch` turns them into means and fractions;
`logprob_mismatch` does both for one set of tokens.

Token kinds: a token is "image" when its sequence holds an image (the image placeholder token
appears in its prompt), else "text". Per sequence rather than a window after the image: it
needs only the packed token ids and `cu_seqlens`, and a Solver answer with the image in view is
the case where the learner's and the engine's vision paths can disagree.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from prco_mega.types import Role

KINDS = ("image", "text")
MEANS = {"abs_sum": "mean_abs", "k3_sum": "kl_k3", "prob_err_sum": "prob_err",
         "weight_sum": "weight_mean", "capped_sum": "capped_frac", "masked_sum": "masked_frac"}
"""Additive statistic -> the mean `finish_mismatch` reports (divided by the prefix's tokens)."""
MAX_LAG = 8
"""Lag histogram buckets 0..MAX_LAG-1 and one for MAX_LAG or more."""


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
    0 exactly when the two log-probs agree. This is the token-level stat the loop logs.

    learner_logprobs, rollout_logprobs  # [T]
    returns                             # [T]
    """
    log_rho = learner_logprobs.float() - rollout_logprobs.float()
    # expm1 keeps precision for the tiny differences a healthy stack has (1e-6 and below)
    return torch.expm1(log_rho) - log_rho


def prob_error(learner_logprobs: Tensor, rollout_logprobs: Tensor) -> Tensor:
    """Token probability error e[t] = |exp(learner[t]) - exp(rollout[t])| in fp32.

    learner_logprobs, rollout_logprobs  # [T]
    returns                             # [T]
    """
    return (learner_logprobs.float().exp() - rollout_logprobs.float().exp()).abs()


def image_sequence_tokens(tokens: Tensor, cu_seqlens: Tensor, image_token_id: int) -> Tensor:
    """[T] bool: the token's sequence holds `image_token_id` (the "image" kind, module doc).

    tokens      # [T] int64
    cu_seqlens  # [N+1]
    """
    num_seqs = cu_seqlens.numel() - 1
    lengths_N = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)
    seq_T = torch.repeat_interleave(torch.arange(num_seqs, device=tokens.device), lengths_N,
                                    output_size=tokens.numel())
    hits_N = torch.zeros(num_seqs, device=tokens.device).index_add(
        0, seq_T, (tokens == image_token_id).float())
    return (hits_N > 0)[seq_T]


def _groups(keep: Tensor, role_ids: Tensor, roles: Iterable[int], image_T: Tensor | None,
            prefix: str) -> dict[str, Tensor]:
    """prefix -> [T] bool selection: all loss tokens, each role's, each kind's and each role and
    kind's (kinds only where `image_T` is given). Every call with the same roles gives the same
    prefixes, whatever tokens the batch holds."""
    kinds = {} if image_T is None else {"image": image_T, "text": ~image_T}
    out = {prefix: keep}
    out.update({f"{prefix}/{kind}": keep & sel for kind, sel in kinds.items()})
    for role in roles:
        in_role = keep & (role_ids == int(role))
        name = f"{prefix}/{_role_name(role)}"
        out[name] = in_role
        out.update({f"{name}/{kind}": in_role & sel for kind, sel in kinds.items()})
    return out


def _check_aligned(reference: Tensor, **named: Tensor) -> None:
    for name, t in named.items():
        if t is not None and t.shape != reference.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, log-probs have "
                             f"{tuple(reference.shape)}")


def mismatch_sums(learner_logprobs: Tensor, rollout_logprobs: Tensor, loss_mask: Tensor,
                  role_ids: Tensor, roles: Iterable[int], *, image_T: Tensor | None = None
                  ) -> dict[str, Tensor]:
    """Additive mismatch statistics over loss tokens (loss_mask != 0), overall, per role in
    `roles` and, with `image_T` ([T] bool, `image_sequence_tokens`), per token kind and per role
    and kind: sums and counts add over micro-batches and data-parallel ranks, `max_abs` takes the
    max. `finish_mismatch` turns the reduced values into means. 0-d tensors, no host sync: every
    micro-batch of a step reports the same keys (pass the step's roles, e.g. those with a loss
    denominator), with zeros where a group has no token.

    Keys, for each group prefix P in "mismatch", "mismatch/<kind>", "mismatch/<role>",
    "mismatch/<role>/<kind>": "P/{abs_sum,k3_sum,prob_err_sum,tokens,max_abs}" (|log-prob
    difference|, `mismatch_kl_k3`, `prob_error`). Values at masked positions are ignored even
    when they are inf or NaN.

    learner_logprobs, rollout_logprobs, loss_mask, role_ids  # [T]
    """
    _check_aligned(learner_logprobs, loss_mask=loss_mask, role_ids=role_ids, image_T=image_T)
    keep = loss_mask != 0
    diff = torch.where(keep, abs_logprob_diff(learner_logprobs, rollout_logprobs), 0.0)
    k3 = torch.where(keep, mismatch_kl_k3(learner_logprobs, rollout_logprobs), 0.0)
    err = torch.where(keep, prob_error(learner_logprobs, rollout_logprobs), 0.0)
    out = {}
    for prefix, sel in _groups(keep, role_ids, roles, image_T, "mismatch").items():
        chosen = torch.where(sel, diff, 0.0)
        out |= {f"{prefix}/abs_sum": chosen.sum(),
                f"{prefix}/k3_sum": torch.where(sel, k3, 0.0).sum(),
                f"{prefix}/prob_err_sum": torch.where(sel, err, 0.0).sum(),
                f"{prefix}/tokens": sel.sum().to(torch.float32),
                f"{prefix}/max_abs": chosen.max() if chosen.numel() else chosen.new_zeros(())}
    return out


def correction_sums(weights: Tensor, hit: Tensor, loss_mask: Tensor, role_ids: Tensor,
                    roles: Iterable[int], hit_name: str, *, image_T: Tensor | None = None
                    ) -> dict[str, Tensor]:
    """Additive statistics of an off-policy correction over loss tokens, grouped as in
    `mismatch_sums` under "correction": "P/{tokens,weight_sum,<hit_name>_sum}" (the coefficient
    c and how many tokens the correction capped or masked: `algo.corrections.HIT_NAMES`).

    weights  # [T] the coefficient c (`algo.corrections.correction_weights`)
    hit, loss_mask, role_ids  # [T]
    """
    _check_aligned(weights, hit=hit, loss_mask=loss_mask, role_ids=role_ids, image_T=image_T)
    keep = loss_mask != 0
    w = torch.where(keep, weights.float(), 0.0)
    h = (keep & hit).float()
    out = {}
    for prefix, sel in _groups(keep, role_ids, roles, image_T, "correction").items():
        out |= {f"{prefix}/tokens": sel.sum().to(torch.float32),
                f"{prefix}/weight_sum": torch.where(sel, w, 0.0).sum(),
                f"{prefix}/{hit_name}_sum": torch.where(sel, h, 0.0).sum()}
    return out


def lag_counts(versions: Sequence[int], step: int, device: torch.device | str = "cpu"
               ) -> dict[str, Tensor]:
    """How many trajectories have each policy lag k = step - version: keys "lag/<k>" for
    k < MAX_LAG and "lag/<MAX_LAG>+" (a fixed key set, so data-parallel ranks reduce it like
    the other sums); `finish_mismatch` turns them into fractions.

    versions  # the `Trajectory.policy_version` of each trajectory trained at `step`
    """
    lags = [step - int(v) for v in versions]
    if lags and min(lags) < 0:
        raise ValueError(f"a trajectory's policy_version ({step - min(lags)}) is newer than the "
                         f"step that trains it ({step})")
    buckets = torch.bincount(torch.tensor([min(k, MAX_LAG) for k in lags], dtype=torch.int64),
                             minlength=MAX_LAG + 1).to(device=device, dtype=torch.float32)
    return {f"lag/{k}" + ("+" if k == MAX_LAG else ""): buckets[k] for k in range(MAX_LAG + 1)}


def _finish_lags(metrics: dict[str, float]) -> dict[str, float]:
    counts = {k.removeprefix("lag/"): v for k, v in metrics.items() if k.startswith("lag/")}
    total = sum(counts.values())
    if total <= 0:
        return {}
    order = [str(k) for k in range(MAX_LAG)] + [f"{MAX_LAG}+"]
    last = max(i for i, k in enumerate(order) if counts.get(k, 0) > 0)
    return {f"train/policy_lag_hist/{k}": counts.get(k, 0.0) / total for k in order[:last + 1]}


def finish_mismatch(metrics: dict[str, float]) -> dict[str, float]:
    """`metrics` with the reduced `mismatch_sums` and `correction_sums` turned into means per
    group prefix P (P/mean_abs = abs_sum / tokens, P/kl_k3, P/prob_err, P/weight_mean,
    P/capped_frac or P/masked_frac; P/max_abs and P/tokens kept; a prefix with no token is
    dropped) and `lag_counts` into `train/policy_lag_hist/<k>` fractions of the step's
    trajectories (buckets up to the largest lag present)."""
    out = {k: v for k, v in metrics.items()
           if not k.startswith(("mismatch/", "correction/", "lag/"))}
    for key, tokens in metrics.items():
        if not (key.startswith(("mismatch/", "correction/")) and key.endswith("/tokens")) \
                or tokens <= 0:
            continue
        prefix = key.removesuffix("/tokens")
        out[key] = tokens
        for stat, mean in MEANS.items():
            if f"{prefix}/{stat}" in metrics:
                out[f"{prefix}/{mean}"] = metrics[f"{prefix}/{stat}"] / tokens
        if f"{prefix}/max_abs" in metrics:
            out[f"{prefix}/max_abs"] = metrics[f"{prefix}/max_abs"]
    return out | _finish_lags(metrics)


def logprob_mismatch(learner_logprobs: Tensor, rollout_logprobs: Tensor, loss_mask: Tensor,
                     role_ids: Tensor) -> dict[str, float]:
    """Mismatch metrics of one set of tokens (`mismatch_sums` then `finish_mismatch`):

      mean_abs = sum_{t in S} d[t] / |S|,   max_abs = max_{t in S} d[t],   tokens = |S|,
      kl_k3    = sum_{t in S} k3[t] / |S|  (see `mismatch_kl_k3`),
      prob_err = sum_{t in S} |p_learner[t] - p_rollout[t]| / |S|,
    with d[t] = |learner - rollout| over the loss tokens S, overall and per role present.

    learner_logprobs, rollout_logprobs, loss_mask, role_ids  # [T]
    """
    roles = torch.unique(role_ids[loss_mask != 0]).tolist() if role_ids.shape == loss_mask.shape else []
    sums = mismatch_sums(learner_logprobs, rollout_logprobs, loss_mask, role_ids, roles)
    return finish_mismatch({k: float(v) for k, v in sums.items()})
