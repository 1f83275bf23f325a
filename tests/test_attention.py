"""SDPA core attention for the local layer spec: the same numbers (and gradients) as Megatron's
unfused masked softmax, on packed block-causal masks, plain causal and arbitrary masks."""
import math

import pytest
import torch

from prco_mega.learner.attention import causal_segments, sdpa_attention
from prco_mega.learner.mrope import packed_causal_mask


def unfused_reference(q, k, v, masked, scale):
    """Megatron's local path: GQA by repeat, scores, masked_fill(-10000), fp32 softmax."""
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    scores = torch.einsum("sbnd,tbnd->bnst", q, k) * scale
    probs = torch.softmax(scores.masked_fill(masked, -10000.0), dim=-1)
    out = torch.einsum("bnst,tbnd->sbnd", probs, v)
    return out.reshape(q.shape[0], q.shape[1], -1)


def qkv(t, b=1, heads=4, groups=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(t, b, n, d, generator=g, requires_grad=True)
            for n in (heads, groups, groups)]


def test_causal_segments_reads_the_packing_back():
    cu = torch.tensor([0, 5, 6, 13, 20])
    assert causal_segments(packed_causal_mask(cu, 20)) == [(0, 5), (5, 6), (6, 13), (13, 20)]


def test_causal_segments_refuses_masks_that_are_not_block_causal():
    mask = packed_causal_mask(torch.tensor([0, 4, 9]), 9).clone()
    mask[0, 0, 6, 1] = False  # one token sees across the boundary
    assert causal_segments(mask) is None
    assert causal_segments(torch.zeros(1, 1, 4, 4, dtype=torch.bool)) is None  # full attention
    assert causal_segments(mask.expand(2, 1, 9, 9)) is None  # one mask per batch row


@pytest.mark.parametrize("kind", ["packed", "causal_none", "arbitrary"])
def test_sdpa_attention_matches_the_unfused_softmax_and_its_gradients(kind):
    t, scale = 23, 1 / math.sqrt(8)
    q, k, v = qkv(t)
    if kind == "packed":
        mask = packed_causal_mask(torch.tensor([0, 7, 8, 15, 23]), t)
    elif kind == "causal_none":
        mask = None
    else:  # a padding-style mask the segment shortcut must not take
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)[None, None].clone()
        mask[..., 3] = True
        mask[..., 3, 3] = False
    masked = mask if mask is not None else torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
    out = sdpa_attention(q, k, v, mask, causal=True, scale=scale)
    ref = unfused_reference(q, k, v, masked, scale)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_without_mask_and_not_causal_every_token_sees_every_token():
    q, k, v = qkv(9, b=2)
    out = sdpa_attention(q, k, v, None, causal=False, scale=0.3)
    ref = unfused_reference(q, k, v, torch.zeros(9, 9, dtype=torch.bool), 0.3)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
