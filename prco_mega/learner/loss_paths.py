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
pre-update policy's): the train/rollout mismatch statistics (`mismatch.mismatch_sums`) and
the off-policy correction (`apply_correction`, presets in `algo.corrections`), which rewrites the
batch's old log-probs and advantages. With several mini-batches the policy runs one pre-step
pass instead and passes `from_forward=False`; so does the fused path with `seq_mask`, whose
coefficient needs whole sequences (the fused head sees one token chunk at a time).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import torch
from torch import Tensor

from prco_mega.algo.corrections import HIT_NAMES, check_correction, correction_weights
from prco_mega.algo.losses import nll_loss, prco_loss
from prco_mega.learner.forward import qwen_vl_forward, token_logprobs, with_loss_totals
from prco_mega.learner.loss_head import FusedPPO, check_impl
from prco_mega.learner.mismatch import (
    correction_sums,
    image_sequence_tokens,
    mismatch_sums,
)
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
    """Truncation cap of the importance weight: token_tis's (required), decoupled's (optional)."""
    correction: str | None = None
    """Off-policy correction preset (`algo.corrections.CORRECTIONS`); None: "token_tis" when
    `tis_cap` is set, else "none" (`off_policy`)."""
    correction_band: tuple[float, float] | None = None
    """(low, high) ratio band of seq_mask and icepop: 0 < low < 1 < high."""
    image_token_id: int | None = None
    """The image placeholder token id: the mismatch and correction metrics are split by token
    kind (`mismatch.image_sequence_tokens`) where it is set."""

    def __post_init__(self):
        check_correction(self.off_policy, self.tis_cap, self.correction_band)

    @property
    def off_policy(self) -> str:
        """The correction preset in force."""
        if self.correction is not None:
            return self.correction
        return "token_tis" if self.tis_cap is not None else "none"


class LossPath(Protocol):
    settings: LossSettings
    reads_rollout: ClassVar[bool]
    """The loss reads the rollout's log-probs (PPO), so the step reports the mismatch to them."""
    corrects_in_forward: bool
    """With `from_forward` the loss applies the off-policy correction itself; where not, the
    policy applies it in a pre-step pass (`apply_correction`)."""

    def forward(self, model: torch.nn.Module, batch: TrainBatch) -> Any:
        """The chunk's output for a packed micro-batch (what `loss` reads on the last stage)."""

    def loss(self, batch: TrainBatch, output: Any) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Megatron loss function: (loss share, loss-token count, metrics)."""


def _denominators(batch: TrainBatch) -> dict[int, float]:
    return {int(r): float(d) for r, d in batch.role_denominators.items()}


def apply_correction(batch: TrainBatch, prox_logprobs: Tensor, settings: LossSettings
                     ) -> tuple[TrainBatch, Tensor, Tensor]:
    """The micro-batch rewritten for the off-policy correction `settings.off_policy`
    (`algo.corrections`): `old_logprobs <- prox_logprobs` (the PPO ratio against the learner's
    pre-update policy) and `advantages <- c * advantages` on loss tokens, c the preset's constant
    coefficient. Since c >= 0 and the clipped surrogate is positively homogeneous in A,
    `c * L_clip(A) = L_clip(c * A)` exactly (KL terms unweighted). Preset "none" returns the
    batch as it is (the ratio against the rollout's log-probs). Also returns (c [T], hit [T]
    bool: where the preset capped or masked) for the metrics.

    prox_logprobs  # [T] the learner's log-probs of batch.tokens before the update
    """
    if prox_logprobs.shape != batch.old_logprobs.shape:
        raise ValueError(f"learner_old_logprobs shape {tuple(prox_logprobs.shape)} != "
                         f"old_logprobs shape {tuple(batch.old_logprobs.shape)}")
    prox = prox_logprobs.to(batch.old_logprobs).detach()
    name = settings.off_policy
    c_T, hit_T = correction_weights(name, prox, batch.old_logprobs, batch.loss_mask,
                                    batch.cu_seqlens, cap=settings.tis_cap,
                                    band=settings.correction_band)
    if name == "none":
        return batch, c_T, hit_T
    c_T = torch.where(batch.loss_mask != 0, c_T, torch.ones_like(c_T))  # prompt tokens untouched
    out = dataclasses.replace(batch, old_logprobs=prox, advantages=batch.advantages * c_T)
    return out, c_T, hit_T


def apply_tis(batch: TrainBatch, learner_old_logprobs: Tensor, cap: float) -> TrainBatch:
    """`apply_correction` with the token_tis preset: `old_logprobs <- learner_old_logprobs`,
    `advantages <- w * advantages` on loss tokens, `w = min(exp(learner_old - rollout_old), cap)`.

    learner_old_logprobs  # [T] the learner's log-probs of batch.tokens before the update
    """
    return apply_correction(batch, learner_old_logprobs,
                            LossSettings(tis_cap=cap, correction="token_tis"))[0]


def token_kinds(batch: TrainBatch, settings: LossSettings) -> Tensor | None:
    """[T] bool "image" kind of each token (`mismatch.image_sequence_tokens`), or None when the
    settings name no image token."""
    if settings.image_token_id is None:
        return None
    return image_sequence_tokens(batch.tokens, batch.cu_seqlens, settings.image_token_id)


def with_image_token(path: Any, image_token_id: int) -> Any:
    """`path` with `settings.image_token_id` set (the metrics' token kinds)."""
    settings = dataclasses.replace(path.settings, image_token_id=int(image_token_id))
    return dataclasses.replace(path, settings=settings)


def corrected(batch: TrainBatch, prox_logprobs: Tensor, settings: LossSettings,
              roles: list[int] | None = None) -> tuple[TrainBatch, dict[str, Tensor]]:
    """The batch with the correction applied (`apply_correction`) and the step's additive
    statistics of the pre-update log-probs against the rollout's: `mismatch_sums` and, for a
    preset other than none, `correction_sums` (per role in `roles`, default the batch's
    denominators' roles, and per token kind where known)."""
    roles = [int(r) for r in batch.role_denominators] if roles is None else roles
    image_T = token_kinds(batch, settings)
    stats = mismatch_sums(prox_logprobs, batch.old_logprobs, batch.loss_mask, batch.role_ids,
                          roles, image_T=image_T)
    out, c_T, hit_T = apply_correction(batch, prox_logprobs, settings)
    name = settings.off_policy
    if name != "none":
        stats |= correction_sums(c_T, hit_T, batch.loss_mask, batch.role_ids, roles,
                                 HIT_NAMES[name], image_T=image_T)
    return out, stats


@dataclass(frozen=True)
class TorchPPO:
    """The PRCO/GRPO/DAPO clipped surrogate (+ KL) on logits, through torch autograd."""

    settings: LossSettings
    from_forward: bool = True
    reads_rollout: ClassVar[bool] = True
    corrects_in_forward: ClassVar[bool] = True

    def forward(self, model: torch.nn.Module, batch: TrainBatch) -> Any:
        return qwen_vl_forward(model, batch)

    def loss(self, batch: TrainBatch, output: Tensor):
        s = self.settings
        logprobs = token_logprobs(output, batch.tokens, batch.cu_seqlens, s.temperature)
        denominators, extra = _denominators(batch), {}
        if self.from_forward:
            batch, extra = corrected(batch, logprobs.detach(), s)
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
    corrects_in_forward: ClassVar[bool] = True

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
    (never a silent fallback), "sft" runs on the torch path without an off-policy correction."""
    check_impl(impl, device if device is not None else torch.device("cpu"))
    if objective == "sft":
        if impl != "torch" or settings.off_policy != "none":
            raise ValueError(f"objective 'sft' runs with impl 'torch' and no off-policy "
                             f"correction (got impl {impl!r}, correction "
                             f"{settings.off_policy!r}, tis_cap {settings.tis_cap})")
        return Supervised(settings)
    if objective != "ppo":
        raise ValueError(f"objective must be 'ppo' or 'sft', got {objective!r}")
    return TorchPPO(settings) if impl == "torch" else FusedPPO(settings)
