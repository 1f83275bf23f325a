"""The model forward of a packed micro-batch and the per-token log-probs read from its logits.

Shared by every loss path (`loss_paths`), the no-gradient passes (`train_step.compute_logprobs`)
and the checks against other implementations; of the learner it imports `routing_replay` (light)
and `model` inside its functions (`model` imports Megatron at its top).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from prco_mega.learner.routing_replay import replay_scope
from prco_mega.types import TrainBatch


def qwen_vl_forward(model: torch.nn.Module, batch: TrainBatch, return_hidden: bool = False):
    """`ModelForward` for `prco_mega.learner.model` chunks (Qwen2.5-VL, possibly DDP-wrapped):
    packed tokens as one row `[1, T]`, mrope positions `[3, 1, T]`, THD packing by `cu_seqlens`
    (the model turns it into a block-diagonal causal mask where Transformer Engine is absent).
    `return_hidden`: see `model.forward` (the fused loss head's input)."""
    from megatron.core.packed_seq_params import PackedSeqParams

    from prco_mega.learner.model import forward  # imports Megatron at its top

    if batch.position_ids is None or batch.position_ids.dim() != 2:
        raise ValueError("qwen_vl_forward needs batch.position_ids [3, T] (mrope positions)")
    cu = batch.cu_seqlens.to(torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    packed = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                             max_seqlen_q=longest, max_seqlen_kv=longest)
    with replay_scope(model, batch):  # a MoE policy's routing replay, where installed
        return forward(model, batch.tokens[None, :], batch.position_ids[:, None, :],
                       batch.pixel_values, batch.image_grid_thw, packed_seq_params=packed,
                       return_hidden=return_hidden)


# ----------------------------------------------------------------------------- log-probs
def token_logprobs(logits: Tensor, tokens: Tensor, cu_seqlens: Tensor,
                   temperature: float = 1.0) -> Tensor:
    """Log-prob of every packed token under the model, from vocab-parallel logits.

    `logprobs[t] = log softmax(logits[t-1] / temperature)[tokens[t]]` (over the FULL vocabulary:
    Megatron's vocab-parallel cross-entropy reduces over the TP group), and 0 at the first token
    of each sequence (nothing predicts it). Aligned with `TrainBatch.old_logprobs`.

    logits      # [1, T, V/tp] (or [T, V/tp])
    tokens      # [T] int64
    cu_seqlens  # [N+1]
    returns     # [T] float32
    """
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    logits_TV = logits.reshape(tokens.numel(), -1)
    # A fresh fp32 tensor: the Megatron op overwrites its input in place.
    scaled = logits_TV.float() / temperature if temperature != 1.0 else logits_TV.float().clone()
    next_T = torch.roll(tokens, -1)
    next_lp_T = -vocab_parallel_cross_entropy(scaled[:, None, :], next_T[:, None])[:, 0]
    lp_T = torch.cat([next_lp_T.new_zeros(1), next_lp_T[:-1]])
    starts = torch.zeros_like(tokens, dtype=torch.bool)
    starts[cu_seqlens[:-1].long()] = True
    return torch.where(starts, torch.zeros_like(lp_T), lp_T)


def to_device(batch: TrainBatch, device: torch.device | str) -> TrainBatch:
    """The batch with every tensor on `device` (a no-op on CPU)."""
    moved = {f.name: getattr(batch, f.name).to(device, non_blocking=True)
             for f in dataclasses.fields(batch) if isinstance(getattr(batch, f.name), Tensor)}
    return dataclasses.replace(batch, **moved)


def with_loss_totals(loss: Tensor, batch: TrainBatch, metrics: dict[str, Tensor]):
    """A Megatron loss function's return value: (loss share, loss-token count, metrics with the
    share and the count added)."""
    num_tokens = (batch.loss_mask != 0).sum().to(torch.int)
    return loss, num_tokens, {**metrics, "loss": loss.detach(),
                              "loss_tokens": num_tokens.to(loss.dtype)}
