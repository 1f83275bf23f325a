"""The fused loss path (`FusedPPO`): the last pipeline stage skips the output layer and hands its
final-norm hidden states and this rank's vocab shard of the output weight to
`prco_kernels.fused_logprob_loss_head`, which computes log-probs, the PPO-clip + KL loss and the
LM-head gradients one token chunk at a time with the TP group passed explicitly: no `[T, V]`
tensor exists. Never a silent fallback: where Triton cannot run, `check_impl` raises.

It computes `prco_loss`'s loss (per-role global denominators, token or sequence level) and
gradients; the aggregation is carried in per-token weights

    token level:     w_t = mask_t / D_role(t)
    sequence level:  w_t = mask_t / (max(1, sum_{s in seq(t), role(s) = role(t)} mask_s) * D_role(t))

(0 for tokens of a role without a positive denominator). The PPO kernel runs once per role on
each token chunk (the role's weights), so its own partial sums are the metrics: per role
`pg_loss`, `kl`, `clipped_tokens` and `tokens` (token counts; `clip_frac` = clipped / tokens
after the step's reduction). Hidden row t predicts token t+1, so per-token inputs are shifted by
one row; the first token of a sequence has no log-prob and, by `TrainBatch`'s contract, loss
mask 0. With `from_forward`, the chunk's own log-probs give the mismatch statistics and the
off-policy correction of the token-level presets (see `loss_paths`, `algo.corrections`);
`seq_mask` needs whole sequences, so the policy applies it in a pre-step pass instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

import prco_kernels
from prco_kernels.ppo_loss import ppo_kl_loss_and_grad, sequence_level_weights, token_level_weights
from prco_mega.algo.corrections import HIT_NAMES, correction_weights
from prco_mega.learner.forward import qwen_vl_forward, with_loss_totals
from prco_mega.learner.mismatch import (
    correction_sums,
    image_sequence_tokens,
    mismatch_sums,
)
from prco_mega.types import Role, TrainBatch

IMPLS = ("torch", "triton")


# ----------------------------------------------------------------------------- dispatch
def check_impl(impl: str, device: torch.device | str) -> None:
    """Raise ValueError for an unknown impl, RuntimeError when "triton" cannot run on `device`."""
    if impl not in IMPLS:
        raise ValueError(f"kernels impl must be one of {IMPLS}, got {impl!r}")
    if impl == "triton":
        if not prco_kernels.available(device):
            raise RuntimeError(
                f"impl='triton' was requested but Triton kernels cannot run on device {device} "
                "(CUDA needs a GPU; CPU needs TRITON_INTERPRET=1 before triton is imported); "
                "set kernels.impl='torch' to use the reference loss")


# ----------------------------------------------------------------------------- weights
def role_token_weights(loss_mask: Tensor, role_ids: Tensor, role_denominators: dict,
                       level: str, cu_seqlens: Tensor) -> dict[int, Tensor]:
    """Per-role aggregation weights w_r [T] (module doc), from the kernels' own weight builders
    on each role's mask: `sum_r sum_t w_r[t] x_t = sum_r agg_r(x)`. Roles without a positive
    denominator get none.

    loss_mask, role_ids  # [T]
    cu_seqlens           # [N+1]
    """
    if level not in ("token", "sequence"):
        raise ValueError(f"aggregation level {level!r} is not one of ('token', 'sequence')")
    out = {}
    for role, denominator in role_denominators.items():
        if denominator < 0:
            raise ValueError(f"role {role} has a negative loss denominator ({denominator})")
        if denominator == 0:
            continue
        mask = loss_mask.float() * (role_ids == int(role)).float()
        out[int(role)] = (token_level_weights(mask, denominator) if level == "token" else
                          sequence_level_weights(mask, cu_seqlens, denominator))
    return out


def _next_row(x_T: Tensor) -> Tensor:
    """[T] -> [T]: row t holds x[t+1] (the token hidden row t predicts); the last row gets 0."""
    return torch.cat([x_T[1:], x_T.new_zeros(1)])


# ----------------------------------------------------------------------------- fused path
@dataclass(frozen=True)
class LossHeadInput:
    """What the last pipeline stage hands the fused loss head instead of logits."""

    hidden: Tensor
    """[S, B, H] final-norm hidden states (sequence-parallel shards already gathered)."""
    weight: Tensor
    """[V/tp, H] this rank's vocab shard of the output layer (or tied embedding) weight."""
    tp_group: Any
    """The tensor-parallel process group the vocab is split over."""


class _RoleChunks:
    """The fused head's per-chunk loss (`prco_kernels` LossFn): one PPO kernel call per role on
    the chunk's rows, summing their losses and gradients and keeping the kernel's partial sums.
    With `from_forward` and a correction preset other than none, the chunk's log-probs (the
    pre-update policy's) replace the old log-probs and the preset's coefficient scales the
    advantages (`loss_paths.apply_correction`, token by token); they feed the mismatch and
    correction statistics. Every [T] input is already shifted to rows (`_next_row`)."""

    def __init__(self, batch: TrainBatch, settings: Any, from_forward: bool):
        if from_forward and settings.off_policy == "seq_mask":
            raise ValueError("the fused loss head corrects one token chunk at a time; the "
                             "seq_mask correction needs whole sequences: apply it before the "
                             "step (from_forward=False, `loss_paths.apply_correction`)")
        den = {int(r): float(d) for r, d in batch.role_denominators.items()}
        weights = role_token_weights(batch.loss_mask, batch.role_ids, den, settings.level,
                                     batch.cu_seqlens)
        self.weights = {r: _next_row(w) for r, w in weights.items()}
        self.old, self.adv = _next_row(batch.old_logprobs.float()), _next_row(batch.advantages.float())
        self.mask, self.roles = _next_row(batch.loss_mask.float()), _next_row(batch.role_ids.long())
        self.ref = None if batch.ref_logprobs is None else _next_row(batch.ref_logprobs.float())
        self.settings, self.from_forward, self.den = settings, from_forward, den
        self.totals = {r: torch.zeros(4, device=self.old.device) for r in self.weights}
        self.learner_old = torch.zeros_like(self.old)
        self.coef = torch.ones_like(self.old)
        self.hit = torch.zeros_like(self.old, dtype=torch.bool)
        image_T = (None if settings.image_token_id is None else
                   image_sequence_tokens(batch.tokens, batch.cu_seqlens, settings.image_token_id))
        self.image = None if image_T is None else _next_row(image_T)

    def __call__(self, lp: Tensor, ent: Tensor, a: int, b: int):
        s = self.settings
        old, adv = self.old[a:b], self.adv[a:b]
        if self.from_forward:
            self.learner_old[a:b] = lp.detach()
            if s.off_policy != "none":  # none keeps the rollout's log-probs, as the torch path
                c, self.hit[a:b] = correction_weights(s.off_policy, lp.detach(), old,
                                                      self.mask[a:b], None, cap=s.tis_cap,
                                                      band=s.correction_band)
                adv = torch.where(self.mask[a:b] != 0, adv * c, adv)
                self.coef[a:b] = c
                old = lp.detach()
        loss, grad = lp.new_zeros(()), torch.zeros_like(lp, dtype=torch.float32)
        for role, w in self.weights.items():
            loss_r, grad_r, totals = ppo_kl_loss_and_grad(
                lp, old, adv, w[a:b], ref_logprobs=None if self.ref is None else self.ref[a:b],
                clip_low=s.clip_low, clip_high=s.clip_high, dual_clip=s.dual_clip,
                kl_coef=s.kl_coef, kl_type=s.kl_kind, return_totals=True)
            loss, grad = loss + loss_r, grad + grad_r
            self.totals[role] += totals
        return loss, grad, None

    def metrics(self) -> dict[str, Tensor]:
        """The kernel's partial sums per role (and the mismatch statistics, `from_forward`)."""
        out = {"pg_loss": self.old.new_zeros(()), "kl_loss": self.old.new_zeros(())}
        for role, t in self.totals.items():
            name = Role(role).name.lower()
            out |= {f"{name}/pg_loss": t[0], f"{name}/clipped_tokens": t[2],
                    f"{name}/tokens": t[3]}
            out["pg_loss"] = out["pg_loss"] + t[0]
            if self.ref is not None:
                out[f"{name}/kl"] = t[1]
                out["kl_loss"] = out["kl_loss"] + self.settings.kl_coef * t[1]
        if self.from_forward:
            out |= mismatch_sums(self.learner_old, self.old, self.mask, self.roles, self.den,
                                 image_T=self.image)
            if self.settings.off_policy != "none":
                out |= correction_sums(self.coef, self.hit, self.mask, self.roles, self.den,
                                       HIT_NAMES[self.settings.off_policy], image_T=self.image)
        return out


@dataclass(frozen=True)
class FusedPPO:
    """The PPO-clip + KL loss through the fused Triton loss head (module doc)."""

    settings: Any
    """`loss_paths.LossSettings`."""
    from_forward: bool = True
    reads_rollout: ClassVar[bool] = True

    @property
    def corrects_in_forward(self) -> bool:
        """Whether `from_forward` can apply the correction (not seq_mask: whole sequences)."""
        return self.settings.off_policy != "seq_mask"

    def forward(self, model: torch.nn.Module, batch: TrainBatch) -> Any:
        """Last stage: a `LossHeadInput` (no output-layer GEMM); other stages: the hidden
        states Megatron sends on."""
        from prco_mega.learner.model import unwrap  # imports Megatron at its top

        out = qwen_vl_forward(model, batch, return_hidden=True)
        if isinstance(out, Tensor):  # not the last stage
            return out
        hidden, weight = out
        return LossHeadInput(hidden, weight, unwrap(model).tp_group)

    def loss(self, batch: TrainBatch, output: Any):
        if not isinstance(output, LossHeadInput):
            raise TypeError("the fused loss path needs LossHeadInput on the last stage, got "
                            f"{type(output).__name__}")
        loss, _, metrics = fused_prco_loss(output.hidden.reshape(batch.num_tokens, -1),
                                           output.weight, batch, self.settings, output.tp_group,
                                           from_forward=self.from_forward)
        return with_loss_totals(loss, batch, metrics)


def fused_prco_loss(hidden: Tensor, weight: Tensor, batch: TrainBatch, settings: Any,
                    tp_group: Any = None, *, from_forward: bool = False
                    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """`prco_loss` of one micro-batch from hidden states through the fused Triton loss head.

    hidden  # [T, H] final-norm hidden states, row t predicts batch.tokens[t+1]
    weight  # [V/tp, H] this rank's vocab shard (rank r holds ids [r V/tp, (r+1) V/tp))
    returns (loss [] differentiable in hidden and weight, logprobs [T] detached and aligned
    with `batch.old_logprobs` (0 at sequence starts), the kernel's metrics per role)
    """
    check_impl("triton", hidden.device)
    if settings.kl_coef != 0.0 and batch.ref_logprobs is None:
        raise ValueError(f"kl_coef ({settings.kl_coef}) != 0 needs ref_logprobs")
    per_chunk = _RoleChunks(batch, settings, from_forward)
    loss, lp_rows, _ = prco_kernels.fused_logprob_loss_head(
        hidden, weight, torch.roll(batch.tokens, -1), per_chunk, temperature=settings.temperature,
        process_group=tp_group, impl="triton")
    starts = torch.zeros_like(batch.tokens, dtype=torch.bool)
    starts[batch.cu_seqlens[:-1].long()] = True
    lp_T = torch.cat([lp_rows.new_zeros(1), lp_rows[:-1]]).masked_fill(starts, 0.0)
    return loss, lp_T, per_chunk.metrics()
