"""The learner's loss paths: each owns its model forward and its Megatron loss function, and is
chosen once when the run is built (`make_loss_path`); `train_step` receives it.

- `TorchPPO` (reference, any device): vocab-parallel logits, `forward.token_logprobs`,
  `algo.prco_loss`; autograd does the rest.
- `FusedPPO` (`loss_head.py`, GPU or CPU under TRITON_INTERPRET=1): the last stage hands hidden
  states to the fused Triton loss head; its metrics are the kernel's own statistics.
- `Supervised`: negative log-likelihood of the response tokens (the tiny model's warm start).

Every loss function returns `(loss share, loss-token count, metrics)` with the step's GLOBAL
per-role denominators (see `train_step`). The PPO paths with `from_forward=True` also take the
learner's log-probs before the update from the training forward itself (its values are the
pre-update policy's): the train/rollout mismatch statistics (`mismatch.mismatch_sums`) and,
with a TIS cap, the importance weights (`apply_tis`). With several mini-batches the policy runs
one pre-step pass instead and passes `from_forward=False`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import torch
from torch import Tensor

from prco_mega.algo.losses import nll_loss, prco_loss, truncated_is_weights
from prco_mega.learner.forward import qwen_vl_forward, token_logprobs, with_loss_totals
from prco_mega.learner.loss_head import FusedPPO, check_impl
from prco_mega.learner.mismatch import mismatch_sums
from prco_mega.types import TrainBatch


@dataclass(frozen=True)
class LossSettings:
    """What a PPO loss needs besides the batch (`build` fills it from the resolved algorithm)."""

    clip_low: float = 0.2
    """PPO ratio lower clip: rho >= 1 - clip_low."""
    clip_high: float = 0.2
    """PPO ratio upper clip: rho <= 1 + clip_high."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1 for negative advantages; None = off."""
    kl_coef: float = 0.0
    """KL-to-reference coefficient; > 0 needs `ref_logprobs` in every batch."""
    kl_kind: str = "k3"
    """KL estimator: k1, k2 or k3."""
    level: str = "token"
    """Aggregation: "token" or "sequence" (denominators must match it)."""
    temperature: float = 1.0
    """Logits are divided by this before log-softmax (match the rollout's log-prob definition)."""
    tis_cap: float | None = None
    """Truncated importance-sampling cap (`apply_tis`); None = off."""

    def __post_init__(self):
        if self.tis_cap is not None and self.tis_cap <= 0:
            raise ValueError(f"tis_cap ({self.tis_cap}) must be > 0 or None")


class LossPath(Protocol):
    settings: LossSettings
    reads_rollout: ClassVar[bool]
    """The loss reads the rollout's log-probs (PPO), so the step reports the mismatch to them."""

    def forward(self, model: torch.nn.Module, batch: TrainBatch) -> Any:
        """The chunk's output for a packed micro-batch (what `loss` reads on the last stage)."""

    def loss(self, batch: TrainBatch, output: Any) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Megatron loss function: (loss share, loss-token count, metrics)."""


def _denominators(batch: TrainBatch) -> dict[int, float]:
    return {int(r): float(d) for r, d in batch.role_denominators.items()}


def apply_tis(batch: TrainBatch, learner_old_logprobs: Tensor, cap: float) -> TrainBatch:
    """The micro-batch rewritten for truncated importance sampling: `old_logprobs <-
    learner_old_logprobs`, `advantages <- w * advantages` on loss tokens, with
    `w = min(exp(learner_old - rollout_old), cap)` (no gradient). Since w > 0 and the clipped
    surrogate is positively homogeneous in A, `w * L_clip(A) = L_clip(w * A)` exactly: this is
    the PPO ratio against the learner's pre-update policy, the rollout/learner mismatch corrected
    by the capped weight (KL terms unweighted).

    learner_old_logprobs  # [T] the learner's log-probs of batch.tokens before the update
    """
    if learner_old_logprobs.shape != batch.old_logprobs.shape:
        raise ValueError(f"learner_old_logprobs shape {tuple(learner_old_logprobs.shape)} != "
                         f"old_logprobs shape {tuple(batch.old_logprobs.shape)}")
    learner_old = learner_old_logprobs.to(batch.old_logprobs).detach()
    w_T = truncated_is_weights(learner_old, batch.old_logprobs, cap)
    w_T = torch.where(batch.loss_mask != 0, w_T, torch.ones_like(w_T))  # prompt tokens untouched
    return dataclasses.replace(batch, old_logprobs=learner_old, advantages=batch.advantages * w_T)


@dataclass(frozen=True)
class TorchPPO:
    """The PRCO/GRPO/DAPO clipped surrogate (+ KL) on logits, through torch autograd."""

    settings: LossSettings
    from_forward: bool = True
    reads_rollout: ClassVar[bool] = True

    def forward(self, model: torch.nn.Module, batch: TrainBatch) -> Any:
        return qwen_vl_forward(model, batch)

    def loss(self, batch: TrainBatch, output: Tensor):
        s = self.settings
        logprobs = token_logprobs(output, batch.tokens, batch.cu_seqlens, s.temperature)
        denominators, extra = _denominators(batch), {}
        if self.from_forward:
            before = logprobs.detach()
            extra = mismatch_sums(before, batch.old_logprobs, batch.loss_mask, batch.role_ids,
                                  denominators)
            if s.tis_cap is not None:
                batch = apply_tis(batch, before, s.tis_cap)
        loss, metrics = prco_loss(
            logprobs, batch.old_logprobs, batch.advantages, batch.loss_mask, batch.role_ids,
            denominators, clip_low=s.clip_low, clip_high=s.clip_high, dual_clip=s.dual_clip,
            ref_logprobs=batch.ref_logprobs, kl_coef=s.kl_coef, kl_kind=s.kl_kind,
            level=s.level, cu_seqlens=batch.cu_seqlens)
        return with_loss_totals(loss, batch, {**metrics, **extra})


@dataclass(frozen=True)
class Supervised:
    """Negative log-likelihood of the response tokens, per-role global means (`algo.nll_loss`)."""

    settings: LossSettings = LossSettings()
    reads_rollout: ClassVar[bool] = False

    def forward(self, model: torch.nn.Module, batch: TrainBatch) -> Any:
        return qwen_vl_forward(model, batch)

    def loss(self, batch: TrainBatch, output: Tensor):
        logprobs = token_logprobs(output, batch.tokens, batch.cu_seqlens,
                                  self.settings.temperature)
        loss, metrics = nll_loss(logprobs, batch.loss_mask, batch.role_ids, _denominators(batch),
                                 level=self.settings.level, cu_seqlens=batch.cu_seqlens)
        return with_loss_totals(loss, batch, metrics)


def make_loss_path(objective: Literal["ppo", "sft"], impl: Literal["torch", "triton"],
                   settings: LossSettings, device: Any = None) -> LossPath:
    """The loss path of a run, checked once: "triton" raises where Triton cannot run on `device`
    (never a silent fallback), "sft" runs on the torch path without TIS."""
    check_impl(impl, device if device is not None else torch.device("cpu"))
    if objective == "sft":
        if impl != "torch" or settings.tis_cap is not None:
            raise ValueError(f"objective 'sft' runs with impl 'torch' and no TIS (got impl "
                             f"{impl!r}, tis_cap {settings.tis_cap})")
        return Supervised(settings)
    if objective != "ppo":
        raise ValueError(f"objective must be 'ppo' or 'sft', got {objective!r}")
    return TorchPPO(settings) if impl == "torch" else FusedPPO(settings)
