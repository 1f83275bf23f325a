"""Qwen3-VL's pieces that differ from Qwen2.5-VL, as pure torch functions: interleaved MRoPE and
the deepstack addition (the check that the deepstack layers sit on the first pipeline stage is
`learner.layout.check_deepstack_placement`, torch-free for the planner).

Interleaved MRoPE (transformers' `Qwen3VLTextRotaryEmbedding`): rotary frequency j of the head's
D/2 takes its position from the temporal axis, except j = 1, 4, 7, ... < 3 * section[1] (height)
and j = 2, 5, 8, ... < 3 * section[2] (width); Qwen2.5-VL instead gives each axis one contiguous
block. Positions themselves are Qwen2.5-VL's (`learner.mrope`): for images both families number
the tokens the same way.

Deepstack: the ViT's features of a few intermediate blocks, each through its own merger, are
added to the decoder's hidden states at the image tokens, after decoder layers 0, 1, ...
"""
from __future__ import annotations

import torch


def interleaved_mrope_freqs(position_ids: torch.Tensor, inv_freq: torch.Tensor,
                            section: list[int]) -> torch.Tensor:
    """Rotary angles [S, B, 1, D] (Megatron's layout, halves repeated) of `position_ids`
    [3, B, S] with `inv_freq` [D/2], axes interleaved by `section` (t, h, w)."""
    freqs = position_ids[..., None].float() * inv_freq.float()  # [3, B, S, D/2]
    out = freqs[0].clone()
    for axis, offset in ((1, 1), (2, 2)):
        sl = slice(offset, section[axis] * 3, 3)
        out[..., sl] = freqs[axis, ..., sl]
    out = torch.cat((out, out), dim=-1)  # [B, S, D]
    return out.transpose(0, 1)[:, :, None, :].contiguous()


def add_deepstack(hidden_SBH: torch.Tensor, mask_BS: torch.Tensor, feats_NH: torch.Tensor,
                  seq_offset: int = 0) -> torch.Tensor:
    """`hidden_SBH` [S_loc, B, H] plus `feats_NH` [N, H] at the image tokens.

    `mask_BS` [B, S] marks the N image tokens of the whole micro-batch; features are in batch-major
    token order (transformers' `masked_scatter` order). `hidden_SBH` may be the sequence slice
    [seq_offset, seq_offset + S_loc) (sequence parallelism); only its own tokens are touched.
    """
    s_loc = hidden_SBH.shape[0]
    order_BS = (mask_BS.reshape(-1).long().cumsum(0) - 1).view(mask_BS.shape)
    local_SB = mask_BS[:, seq_offset:seq_offset + s_loc].transpose(0, 1)
    if not bool(local_SB.any()):
        return hidden_SBH
    feat_idx = order_BS[:, seq_offset:seq_offset + s_loc].transpose(0, 1)[local_SB]
    s_idx, b_idx = local_SB.nonzero(as_tuple=True)
    update = hidden_SBH[s_idx, b_idx] + feats_NH[feat_idx].to(hidden_SBH.dtype)
    return hidden_SBH.index_put((s_idx, b_idx), update)
