"""The learner's loss paths, chosen by `LossSettings.impl`, and truncated importance sampling.

- `impl="torch"` (reference, any device): the model's output layer makes vocab-parallel logits
  `[1, T, V/tp]`, `train_step.token_logprobs` reads the log-probs, `prco_mega.algo.prco_loss`
  makes the loss; autograd does the rest.
- `impl="triton"` (GPU, or CPU under TRITON_INTERPRET=1): the last pipeline stage skips the output
  layer (`model.forward(..., return_hidden=True)`) and hands its final-norm hidden states and this
  rank's vocab shard of the output weight to `prco_kernels.fused_logprob_loss_head`, which
  computes log-probs, the PPO-clip + KL loss and the LM-head gradients one token chunk at a time
  with the TP group passed explicitly: no `[T, V]` tensor exists. Never a silent fallback: where
  Triton cannot run it raises `RuntimeError`.

Both paths compute the same loss (`prco_loss`'s per-role global denominators, token or sequence
level) and the same gradients. The fused path carries the aggregation in per-token weights:

    token level:     w_t = mask_t / D_role(t)
    sequence level:  w_t = mask_t / (max(1, sum_{s in seq(t), role(s) = role(t)} mask_s) * D_role(t))

(0 for tokens of a role without a positive denominator), so `sum_t w_t (pg_t + kl_coef kl_t)`
equals `prco_loss`. Hidden row t predicts token t+1, so per-token inputs are shifted by one row;
the first token of a sequence has no log-prob and, by `TrainBatch`'s contract, loss mask 0.

Truncated importance sampling (`apply_tis`, `LossSettings.tis_cap`): our `old_logprobs` are the
rollout engine's. With the learner's own log-probs of the same tokens before the step,
`learner_old` (one `compute_logprobs` pass), the per-token loss becomes

    w_t * L_clip(logprob_t - learner_old_t, A_t),   w_t = min(exp(learner_old_t - old_t), cap)

(the PPO ratio against the learner's old policy, the rollout/learner mismatch corrected by the
capped, gradient-free weight w; KL terms are not weighted). Since w > 0 and the clipped surrogate
is positively homogeneous in A, `w * L_clip(A) = L_clip(w * A)` exactly, so TIS is a batch
rewrite (old log-probs <- learner_old, advantages <- w * advantages) that both paths share.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prco_mega.types import TrainBatch

IMPLS = ("torch", "triton")


@dataclass(frozen=True)
class LossHeadInput:
    """What the last pipeline stage hands the fused loss head instead of logits."""

    hidden: Tensor
    """[S, B, H] final-norm hidden states (sequence-parallel shards already gathered)."""
    weight: Tensor
    """[V/tp, H] this rank's vocab shard of the output layer (or tied embedding) weight."""
    tp_group: Any
    """The tensor-parallel process group the vocab is split over."""


# ----------------------------------------------------------------------------- dispatch
def check_impl(impl: str, device: torch.device | str) -> None:
    """Raise ValueError for an unknown impl, RuntimeError when "triton" cannot run on `device`."""
    if impl not in IMPLS:
        raise ValueError(f"kernels impl must be one of {IMPLS}, got {impl!r}")
    if impl == "triton":
        import prco_kernels

        if not prco_kernels.available(device):
            raise RuntimeError(
                f"impl='triton' was requested but Triton kernels cannot run on device {device} "
                "(CUDA needs a GPU; CPU needs TRITON_INTERPRET=1 before triton is imported); "
                "set kernels.impl='torch' to use the reference loss")


def qwen_vl_hidden_forward(model: torch.nn.Module, batch: TrainBatch):
    """`ModelForward` for impl="triton": like `train_step.qwen_vl_forward`, but the last pipeline
    stage returns a `LossHeadInput` (no output-layer GEMM); other stages return the hidden states
    Megatron sends on."""
    from prco_mega.learner.model import _unwrap
    from prco_mega.learner.train_step import qwen_vl_forward

    out = qwen_vl_forward(model, batch, return_hidden=True)
    if isinstance(out, Tensor):  # not the last stage
        return out
    hidden, weight = out
    return LossHeadInput(hidden, weight, _unwrap(model).tp_group)


# ----------------------------------------------------------------------------- weights
def prco_token_weights(loss_mask: Tensor, role_ids: Tensor, role_denominators: dict,
                       level: str, cu_seqlens: Tensor) -> Tensor:
    """Per-token aggregation weights w [T] with `sum_t w_t x_t = sum_r agg_r(x)` (module doc).

    loss_mask, role_ids  # [T]
    cu_seqlens           # [N+1]
    returns              # [T] float32
    """
    if level not in ("token", "sequence"):
        raise ValueError(f"aggregation level {level!r} is not one of ('token', 'sequence')")
    mask = loss_mask.float()
    lengths_N = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    seq_T = torch.repeat_interleave(torch.arange(lengths_N.numel(), device=mask.device), lengths_N,
                                    output_size=mask.numel())
    w = torch.zeros_like(mask)
    for role, denominator in role_denominators.items():
        if denominator < 0:
            raise ValueError(f"role {role} has a negative loss denominator ({denominator})")
        if denominator == 0:
            continue
        m = mask * (role_ids == int(role)).to(mask.dtype)
        if level == "sequence":
            counts_N = torch.zeros(lengths_N.numel(), device=mask.device).index_add(0, seq_T, m)
            m = m / counts_N.clamp(min=1.0)[seq_T]
        w = w + m / float(denominator)
    return w


def _next_row(x_T: Tensor) -> Tensor:
    """[T] -> [T]: row t holds x[t+1] (the token hidden row t predicts); the last row gets 0."""
    return torch.cat([x_T[1:], x_T.new_zeros(1)])


# ----------------------------------------------------------------------------- fused loss
def fused_prco_loss(hidden: Tensor, weight: Tensor, batch: TrainBatch, settings: Any,
                    tp_group: Any = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """`prco_loss` of one micro-batch from hidden states through the fused Triton loss head.

    hidden  # [T, H] final-norm hidden states, row t predicts batch.tokens[t+1]
    weight  # [V/tp, H] this rank's vocab shard (rank r holds ids [r V/tp, (r+1) V/tp))
    returns (loss [] differentiable in hidden and weight, logprobs [T] detached and aligned
    with `batch.old_logprobs` (0 at sequence starts), metrics as `prco_loss` names them)
    """
    import prco_kernels

    from prco_mega.algo.losses import prco_loss

    check_impl(settings.impl, hidden.device)
    if settings.kl_coef != 0.0 and batch.ref_logprobs is None:
        raise ValueError(f"kl_coef ({settings.kl_coef}) != 0 needs ref_logprobs")
    den = {int(r): float(d) for r, d in batch.role_denominators.items()}
    w_T = prco_token_weights(batch.loss_mask, batch.role_ids, den, settings.level,
                             batch.cu_seqlens)
    ref = None if batch.ref_logprobs is None else _next_row(batch.ref_logprobs.float())
    loss_fn = prco_kernels.ppo_kl_loss_fn(
        _next_row(batch.old_logprobs.float()), _next_row(batch.advantages.float()), _next_row(w_T),
        ref_logprobs=ref, impl=settings.impl, clip_low=settings.clip_low,
        clip_high=settings.clip_high, dual_clip=settings.dual_clip, kl_coef=settings.kl_coef,
        kl_type=settings.kl_kind)
    loss, lp_rows, _ = prco_kernels.fused_logprob_loss_head(
        hidden, weight, torch.roll(batch.tokens, -1), loss_fn, temperature=settings.temperature,
        process_group=tp_group, impl=settings.impl)
    starts = torch.zeros_like(batch.tokens, dtype=torch.bool)
    starts[batch.cu_seqlens[:-1].long()] = True
    lp_T = torch.cat([lp_rows.new_zeros(1), lp_rows[:-1]]).masked_fill(starts, 0.0)
    with torch.no_grad():  # metrics: elementwise [T] work on the kernel's log-probs
        _, metrics = prco_loss(
            lp_T, batch.old_logprobs, batch.advantages, batch.loss_mask, batch.role_ids, den,
            clip_low=settings.clip_low, clip_high=settings.clip_high, dual_clip=settings.dual_clip,
            ref_logprobs=batch.ref_logprobs, kl_coef=settings.kl_coef, kl_kind=settings.kl_kind,
            level=settings.level, cu_seqlens=batch.cu_seqlens)
    return loss, lp_T, metrics


def fused_prco_loss_func(batch: TrainBatch, settings: Any, output: Any):
    """Megatron loss function of the impl="triton" path: `(loss share, loss-token count,
    metrics)` exactly as `train_step.prco_loss_func` returns them."""
    if not isinstance(output, LossHeadInput):
        raise TypeError("impl='triton' needs a model forward that returns LossHeadInput on the "
                         f"last stage (qwen_vl_hidden_forward), got {type(output).__name__}")
    hidden_TH = output.hidden.reshape(batch.num_tokens, -1)
    loss, _, metrics = fused_prco_loss(hidden_TH, output.weight, batch, settings, output.tp_group)
    num_tokens = (batch.loss_mask != 0).sum().to(torch.int)
    metrics = {**metrics, "loss": loss.detach(), "loss_tokens": num_tokens.to(loss.dtype)}
    return loss, num_tokens, metrics


# ----------------------------------------------------------------------------- TIS
def apply_tis(batch: TrainBatch, learner_old_logprobs: Tensor, cap: float) -> TrainBatch:
    """The micro-batch rewritten for truncated importance sampling (module doc):
    `old_logprobs <- learner_old_logprobs`, `advantages <- w * advantages` on loss tokens, with
    `w = min(exp(learner_old_logprobs - batch.old_logprobs), cap)` (no gradient).

    learner_old_logprobs  # [T] the learner's log-probs of batch.tokens before the step
    """
    from prco_mega.algo.losses import truncated_is_weights

    if learner_old_logprobs.shape != batch.old_logprobs.shape:
        raise ValueError(f"learner_old_logprobs shape {tuple(learner_old_logprobs.shape)} != "
                         f"old_logprobs shape {tuple(batch.old_logprobs.shape)}")
    learner_old = learner_old_logprobs.to(batch.old_logprobs).detach()
    w_T = truncated_is_weights(learner_old, batch.old_logprobs, cap)
    w_T = torch.where(batch.loss_mask != 0, w_T, torch.ones_like(w_T))  # prompt tokens untouched
    return dataclasses.replace(batch, old_logprobs=learner_old, advantages=batch.advantages * w_T)
