"""Off-policy corrections of the PPO loss, as presets (`algo.off_policy_correction`).

Three policies meet in a step: the behaviour policy mu that drew the tokens (the rollout engine:
`TrainBatch.old_logprobs`, possibly some updates old and computed by other kernels), the
learner's policy before the update pi_prox (its pre-step log-probs: the training forward's own,
or the one pre-step pass with several mini-batches), and the policy being trained pi_theta.
Every preset but `none` takes the PPO ratio against pi_prox and multiplies each token's clipped
loss by a constant coefficient c_t >= 0 built from the per-token ratio k_t = pi_prox / mu:

    loss_t = c_t * L_clip(pi_theta / pi_prox, A_t)

- `none`:      standard PPO against the behaviour policy, loss_t = L_clip(pi_theta / mu, A_t).
- `token_tis`: truncated importance sampling, c_t = min(k_t, cap).
- `seq_mask`:  per sequence n the geometric-mean ratio g_n = exp(mean_{t in n} log k_t) over its
               loss tokens; c_t = 1 if low <= g_n <= high else 0 (the whole sequence leaves the
               loss: rejection, no reweighting).
- `icepop`:    c_t = k_t if low <= k_t <= high else 0 (IcePop's double-sided mask: tokens whose
               ratio leaves the band get no policy gradient; the others are reweighted by k_t).
- `decoupled`: decoupled PPO, c_t = k_t, or min(k_t, cap) with a cap. With pi_prox = mu every
               c_t is 1 and the ratio is pi_theta / mu: exactly standard PPO.

Since c_t >= 0 is a constant and L_clip is positively homogeneous in A (dual clip included),
c_t * L_clip(r, A) = L_clip(r, c_t * A): a loss path applies any preset by rewriting the batch
(old log-probs <- pi_prox, advantages <- c * advantages), which the fused Triton path takes as
it is. The learner holds only its current weights, so pi_prox is also TIS's "learner old policy":
`token_tis` with cap C and `decoupled` with cap C give the same loss; `decoupled` without a cap
is the untruncated objective. Masked tokens stay in the role's global denominator (they add 0),
so the masked fraction, which the metrics report, scales the step's policy-gradient signal.

All functions are pure and elementwise over packed tokens; inputs at positions that are no loss
token may hold anything (prompt tokens, padding) and the caller ignores them there.
"""
from __future__ import annotations

import torch
from torch import Tensor

from prco_mega.algo.losses import ppo_clip_loss, truncated_is_weights

CORRECTIONS = ("none", "token_tis", "seq_mask", "icepop", "decoupled")
BANDED = ("seq_mask", "icepop")
"""Presets parameterised by a ratio band (low, high)."""
CAPPED = ("token_tis", "decoupled")
"""Presets parameterised by a truncation cap."""
HIT_NAMES = {"token_tis": "capped", "decoupled": "capped", "seq_mask": "masked",
             "icepop": "masked"}
"""What a preset does to the tokens it acts on (metrics: `<name>_frac`)."""


def check_correction(name: str, cap: float | None, band: tuple[float, float] | None) -> None:
    """ValueError naming the values unless `name` is a preset and its parameters fit it:
    token_tis needs cap > 0; decoupled takes no cap or cap >= 1 (so that it is standard PPO
    when the policies agree); seq_mask and icepop need 0 < low < 1 < high; no preset takes a
    parameter of another."""
    if name not in CORRECTIONS:
        raise ValueError(f"off-policy correction {name!r} is not one of {CORRECTIONS}")
    if cap is not None and cap <= 0:
        raise ValueError(f"tis_cap ({cap}) must be > 0 or None")
    if name == "token_tis" and cap is None:
        raise ValueError("off-policy correction 'token_tis' needs tis_cap")
    if name == "decoupled" and cap is not None and cap < 1:
        raise ValueError(f"decoupled PPO's tis_cap ({cap}) must be >= 1 (weights are 1 where "
                         "the proximal and behaviour policies agree)")
    if name not in CAPPED and cap is not None:
        raise ValueError(f"tis_cap ({cap}) is a parameter of {CAPPED}, not of {name!r}")
    if name in BANDED:
        if band is None or not 0.0 < band[0] < 1.0 < band[1]:
            raise ValueError(f"{name!r} needs a ratio band (low, high) with 0 < low < 1 < high, "
                             f"got {band}")
    elif band is not None:
        raise ValueError(f"a ratio band {band} is a parameter of {BANDED}, not of {name!r}")


def _in_band(ratio: Tensor, low: float, high: float) -> Tensor:
    return (ratio >= low) & (ratio <= high)


def icepop_weights(prox_logprobs: Tensor, behaviour_logprobs: Tensor, low: float, high: float
                   ) -> tuple[Tensor, Tensor]:
    """IcePop: k = exp(prox - behaviour), c = k where low <= k <= high, else 0.

    prox_logprobs, behaviour_logprobs  # [T]
    returns (c [T] detached, masked [T] bool: k outside the band)
    """
    k = torch.exp(prox_logprobs - behaviour_logprobs).detach()
    keep = _in_band(k, low, high)  # an inf or NaN ratio is outside the band
    return torch.where(keep, k, torch.zeros_like(k)), ~keep


def sequence_geometric_ratio(prox_logprobs: Tensor, behaviour_logprobs: Tensor,
                             loss_mask: Tensor, cu_seqlens: Tensor) -> Tensor:
    """g_n = exp(sum_{t in n} m_t (prox_t - behaviour_t) / max(1, sum_{t in n} m_t)): the
    geometric mean of the per-token ratios over each sequence's loss tokens (1 for a sequence
    without one).

    prox_logprobs, behaviour_logprobs, loss_mask  # [T]
    cu_seqlens                                    # [N+1]
    returns                                       # [N]
    """
    num_seqs = cu_seqlens.numel() - 1
    lengths_N = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)
    seq_T = torch.repeat_interleave(torch.arange(num_seqs, device=loss_mask.device), lengths_N,
                                    output_size=loss_mask.numel())
    keep = loss_mask != 0
    # where, not a product: log-probs at prompt and padding positions may be inf/NaN
    log_k = torch.where(keep, (prox_logprobs - behaviour_logprobs).float(), 0.0).detach()
    sums_N = torch.zeros(num_seqs, device=log_k.device).index_add(0, seq_T, log_k)
    counts_N = torch.zeros_like(sums_N).index_add(0, seq_T, keep.float())
    return torch.exp(sums_N / counts_N.clamp(min=1.0))


def seq_mask_weights(prox_logprobs: Tensor, behaviour_logprobs: Tensor, loss_mask: Tensor,
                     cu_seqlens: Tensor, low: float, high: float) -> tuple[Tensor, Tensor]:
    """Sequence mask: c_t = 1 if low <= g_n <= high for the sequence n holding t, else 0, with g
    the geometric-mean ratio (`sequence_geometric_ratio`).

    prox_logprobs, behaviour_logprobs, loss_mask  # [T]
    cu_seqlens                                    # [N+1]
    returns (c [T] float32, masked [T] bool)
    """
    g_N = sequence_geometric_ratio(prox_logprobs, behaviour_logprobs, loss_mask, cu_seqlens)
    lengths_N = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)
    keep_T = torch.repeat_interleave(_in_band(g_N, low, high), lengths_N,
                                     output_size=loss_mask.numel())
    return keep_T.float(), ~keep_T


def decoupled_weights(prox_logprobs: Tensor, behaviour_logprobs: Tensor, cap: float | None
                      ) -> tuple[Tensor, Tensor]:
    """Decoupled PPO's behaviour weight c = exp(prox - behaviour), truncated at `cap` when given.

    prox_logprobs, behaviour_logprobs  # [T]
    returns (c [T] detached, capped [T] bool: the raw weight exceeded the cap)
    """
    k = torch.exp(prox_logprobs - behaviour_logprobs).detach()
    if cap is None:
        return k, torch.zeros_like(k, dtype=torch.bool)
    return k.clamp(max=cap), k > cap


def correction_weights(name: str, prox_logprobs: Tensor, behaviour_logprobs: Tensor,
                       loss_mask: Tensor, cu_seqlens: Tensor | None, *, cap: float | None = None,
                       band: tuple[float, float] | None = None) -> tuple[Tensor, Tensor]:
    """The coefficient c [T] of preset `name` (module doc) and where it acted [T] bool (the
    token was capped or masked). `cu_seqlens` [N+1] is needed by seq_mask only; `none` gives
    c = 1 everywhere.

    prox_logprobs, behaviour_logprobs, loss_mask  # [T]
    """
    check_correction(name, cap, band)
    if name == "none":
        ones = torch.ones_like(behaviour_logprobs)
        return ones, torch.zeros_like(ones, dtype=torch.bool)
    if name == "token_tis":
        w = truncated_is_weights(prox_logprobs, behaviour_logprobs, cap)
        return w, torch.exp(prox_logprobs - behaviour_logprobs).detach() > cap
    if name == "decoupled":
        return decoupled_weights(prox_logprobs, behaviour_logprobs, cap)
    if name == "icepop":
        return icepop_weights(prox_logprobs, behaviour_logprobs, *band)
    if cu_seqlens is None:
        raise ValueError("the seq_mask correction needs cu_seqlens (whole sequences)")
    return seq_mask_weights(prox_logprobs, behaviour_logprobs, loss_mask, cu_seqlens, *band)


def corrected_ppo_loss(logprobs: Tensor, prox_logprobs: Tensor, advantages: Tensor,
                       weights: Tensor, *, clip_low: float, clip_high: float,
                       dual_clip: float | None = None) -> tuple[Tensor, Tensor]:
    """The reference per-token loss of a correction: `c_t * L_clip(exp(logprobs - prox), A_t)`
    (`ppo_clip_loss`), with `weights` = c from `correction_weights`.

    logprobs, prox_logprobs, advantages, weights  # [T]
    returns (loss [T], clipped [T] bool)
    """
    loss, clipped = ppo_clip_loss(logprobs, prox_logprobs, advantages, clip_low=clip_low,
                                  clip_high=clip_high, dual_clip=dual_clip)
    return weights * loss, clipped


def decoupled_ppo_loss(logprobs: Tensor, prox_logprobs: Tensor, behaviour_logprobs: Tensor,
                       advantages: Tensor, *, cap: float | None = None, clip_low: float,
                       clip_high: float, dual_clip: float | None = None
                       ) -> tuple[Tensor, Tensor]:
    """Decoupled PPO per token:

        loss_t = w_t * max(-A_t r_t, -A_t clip(r_t, 1 - clip_low, 1 + clip_high)),
        r_t = pi_theta / pi_prox = exp(logprobs - prox),
        w_t = pi_prox / mu = exp(prox - behaviour), truncated at `cap` when given (a constant),

    with the dual clip as in `ppo_clip_loss`. The clip keeps the update near pi_prox, the weight
    corrects for the tokens having been drawn by mu. With prox == behaviour, w = 1 and this is
    `ppo_clip_loss(logprobs, behaviour, A)` exactly.

    logprobs, prox_logprobs, behaviour_logprobs, advantages  # [T]
    returns (loss [T], clipped [T] bool)
    """
    weights, _ = decoupled_weights(prox_logprobs, behaviour_logprobs, cap)
    return corrected_ppo_loss(logprobs, prox_logprobs, advantages, weights, clip_low=clip_low,
                              clip_high=clip_high, dual_clip=dual_clip)
