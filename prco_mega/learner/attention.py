"""Core attention for the local (no Transformer Engine) layer spec: torch SDPA, one call per
packed sequence.

Without TE, Megatron's `DotProductAttention` materialises the [b, heads, T, T] scores with
baddbmm, masks them and runs an unfused softmax. Packed batches (see `model.py`) reach it as a
block-diagonal causal mask over T ~ 1,000 tokens, so most of that work is on pairs of tokens from
different sequences that the mask then throws away. `SdpaDotProductAttention` finds the sequence
boundaries in that mask and runs `scaled_dot_product_attention(is_causal=True)` per sequence:
the same result (masked scores are exactly zero after the softmax either way), ~5x less
attention time on CPU. Any other mask goes to SDPA as a mask; configurations the shortcut does
not cover (attention dropout while training, softmax offsets, sliding windows, query-key layer
scaling) keep Megatron's implementation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType


def causal_segments(mask: torch.Tensor) -> list[tuple[int, int]] | None:
    """[(start, end)] of the sequences when `mask` ([1, 1, T, T], True = masked, Megatron's
    convention) is exactly block-diagonal causal; None for any other mask."""
    if mask.dim() != 4 or mask.shape[0] != 1 or mask.shape[1] != 1 or mask.dtype != torch.bool:
        return None
    m = mask[0, 0]
    t = m.shape[-1]
    if m.shape[0] != t:
        return None
    # A sequence starts where a token may not see the token before it.
    starts = [0] + (torch.nonzero(m.diagonal(-1)).flatten() + 1).tolist()
    seg = torch.zeros(t, dtype=torch.long)
    seg[starts[1:]] = 1
    seg = seg.cumsum(0)
    pos = torch.arange(t)
    allowed = (seg[:, None] == seg[None, :]) & (pos[None, :] <= pos[:, None])
    if not torch.equal(~allowed.to(m.device), m):
        return None
    return list(zip(starts, starts[1:] + [t]))


def sdpa_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, *, causal: bool,
                   scale: float) -> torch.Tensor:
    """Attention on Megatron's layouts: q [s, b, heads, d], k/v [s, b, groups, d] -> [s, b,
    heads * d]. `attention_mask` is True where attention is forbidden; with None, `causal`
    chooses between a causal and a full mask."""
    sq, b, heads, d = query.shape
    rep = heads // key.shape[2]
    q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))  # [b, n, s, d]
    if rep > 1:
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if attention_mask is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    elif (segments := causal_segments(attention_mask)) is not None:
        out = torch.cat([F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e],
                                                        is_causal=True, scale=scale)
                         for s, e in segments], dim=2)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=~attention_mask, scale=scale)
    return out.permute(2, 0, 1, 3).reshape(sq, b, heads * d)


class SdpaDotProductAttention(DotProductAttention):
    """`DotProductAttention` through `sdpa_attention` wherever the two are the same function."""

    def _sdpa_applies(self, attention_bias, packed_seq_params) -> bool:
        cfg = self.config
        dropout = self.attention_dropout.p if self.training else 0.0
        return (attention_bias is None and packed_seq_params is None and dropout == 0.0
                and getattr(cfg, "softmax_type", "vanilla") == "vanilla"
                and not cfg.apply_query_key_layer_scaling
                and getattr(self.scale_mask_softmax, "window_size", None) is None
                and self.attn_mask_type in (AttnMaskType.causal, AttnMaskType.padding,
                                            AttnMaskType.no_mask))

    def forward(self, query, key, value, attention_mask, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        if not self._sdpa_applies(attention_bias, packed_seq_params):
            return super().forward(query, key, value, attention_mask, attn_mask_type,
                                   attention_bias, packed_seq_params)
        mask_type = attn_mask_type or self.attn_mask_type
        return sdpa_attention(query, key, value, attention_mask,
                              causal=mask_type == AttnMaskType.causal, scale=self.softmax_scale)
