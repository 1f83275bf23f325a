"""Triton kernels for the PRCO loss head (imports only torch and triton)."""
from ._dispatch import available, interpreting
from .advantage import group_advantages, token_advantages, token_advantages_reference
from .logprob import linear_logprob_entropy, linear_logprob_entropy_reference
from .loss_head import fused_logprob_loss_head, ppo_kl_loss_fn
from .ppo_loss import (kl_penalty, ppo_clip_loss, ppo_kl_loss, ppo_kl_loss_and_grad,
                       ppo_kl_loss_reference, sequence_level_weights, token_level_weights)

__all__ = [
    "available", "interpreting", "group_advantages", "token_advantages",
    "token_advantages_reference", "linear_logprob_entropy", "linear_logprob_entropy_reference",
    "fused_logprob_loss_head", "ppo_kl_loss_fn", "kl_penalty", "ppo_clip_loss", "ppo_kl_loss",
    "ppo_kl_loss_and_grad", "ppo_kl_loss_reference", "sequence_level_weights", "token_level_weights",
]
