"""Triton kernels of the fused linear log-prob + entropy (see logprob.py for the math).

Partial statistics of a block of logits z = hidden @ weight_shard^T / temperature, per token:
    m = max z,  s = sum exp(z - m),  w = sum exp(z - m) * z,  tz = z[target] (0 off-shard)
Any set of blocks (vocab tiles, vocab splits, TP ranks) combines exactly by rescaling to a common max.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def fused_fwd_kernel(h_ptr, w_ptr, tgt_ptr, stats_ptr, T, V, H, vocab_start, inv_temp,
                     stride_h, stride_w, tiles_per_split,
                     BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                     UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """stats[split, 0:4, t] for a [BLOCK_T] token block and one vocab split; logits stay on chip."""
    pid_t = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < T
    tgt = tl.load(tgt_ptr + rows, mask=row_ok, other=-1).to(tl.int64) - vocab_start
    m = tl.full([BLOCK_T], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_T], tl.float32)
    w = tl.zeros([BLOCK_T], tl.float32)
    tz = tl.zeros([BLOCK_T], tl.float32)
    # the last split may run past n_tiles: those tiles are fully masked (cols >= V) and change
    # nothing, which keeps the loop bounds scalar for every Triton version's interpreter
    for i in range(0, tiles_per_split):
        cols = (pid_s * tiles_per_split + i) * BLOCK_V + tl.arange(0, BLOCK_V)
        col_ok = cols < V
        acc = tl.zeros([BLOCK_T, BLOCK_V], tl.float32)
        for k in range(0, H, BLOCK_H):
            ks = k + tl.arange(0, BLOCK_H)
            k_ok = ks < H
            x = tl.load(h_ptr + rows[:, None].to(tl.int64) * stride_h + ks[None, :],
                        mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            wt = tl.load(w_ptr + cols[None, :].to(tl.int64) * stride_w + ks[:, None],
                         mask=col_ok[None, :] & k_ok[:, None], other=0.0)
            if UPCAST:  # the interpreter computes bf16 wrongly: widen right after the load
                x = x.to(tl.float32)
                wt = wt.to(tl.float32)
            if IEEE:  # fp32 inputs: full-precision products, not tf32
                acc = tl.dot(x, wt, acc, input_precision="ieee")
            else:
                acc = tl.dot(x, wt, acc)
        z = tl.where(col_ok[None, :], acc * inv_temp, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(z - m_new[:, None])
        z0 = tl.where(col_ok[None, :], z, 0.0)  # keeps 0 * -inf out of the entropy sum
        s = s * alpha + tl.sum(p, axis=1)
        w = w * alpha + tl.sum(p * z0, axis=1)
        tz += tl.sum(tl.where(cols[None, :] == tgt[:, None], z0, 0.0), axis=1)
        m = m_new
    base = stats_ptr + pid_s * 4 * T + rows
    tl.store(base, m, mask=row_ok)
    tl.store(base + T, s, mask=row_ok)
    tl.store(base + 2 * T, w, mask=row_ok)
    tl.store(base + 3 * T, tz, mask=row_ok)


@triton.jit
def chunk_stats_kernel(z_ptr, tgt_ptr, stats_ptr, C, V, stride, vocab_start, inv_temp,
                       BLOCK_V: tl.constexpr):
    """stats[0:4, row] of one materialised logits row (a token chunk of the loss head)."""
    row = tl.program_id(0)
    tgt = tl.load(tgt_ptr + row).to(tl.int64) - vocab_start
    m = tl.full([BLOCK_V], float("-inf"), tl.float32)  # one online max per lane, merged at the end
    s = tl.zeros([BLOCK_V], tl.float32)
    w = tl.zeros([BLOCK_V], tl.float32)
    tz = tl.zeros([BLOCK_V], tl.float32)
    row_ptr = z_ptr + row.to(tl.int64) * stride
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        ok = cols < V
        z = tl.load(row_ptr + cols, mask=ok, other=0.0).to(tl.float32) * inv_temp
        m_new = tl.where(ok, tl.maximum(m, z), m)
        alpha = tl.where(m == float("-inf"), 0.0, tl.exp(m - m_new))
        p = tl.where(ok, tl.exp(z - m_new), 0.0)
        s = s * alpha + p
        w = w * alpha + p * z
        tz += tl.where(ok & (cols == tgt), z, 0.0)
        m = m_new
    big = tl.max(m, axis=0)
    scale = tl.where(m == float("-inf"), 0.0, tl.exp(m - big))
    tl.store(stats_ptr + row, big)
    tl.store(stats_ptr + C + row, tl.sum(s * scale, axis=0))
    tl.store(stats_ptr + 2 * C + row, tl.sum(w * scale, axis=0))
    tl.store(stats_ptr + 3 * C + row, tl.sum(tz, axis=0))


@triton.jit
def chunk_grad_kernel(z_ptr, tgt_ptr, lse_ptr, mu_ptr, glp_ptr, gent_ptr, V, stride, vocab_start,
                      inv_temp, HAS_ENT: tl.constexpr, BLOCK_V: tl.constexpr):
    """Overwrite logits z with d loss / d (hidden @ weight^T), in place:
    (g_lp * (onehot - p) - g_ent * p * (z - mu)) / temperature, p = exp(z - lse)."""
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    ok = cols < V
    ptrs = z_ptr + row.to(tl.int64) * stride + cols
    z = tl.load(ptrs, mask=ok, other=0.0).to(tl.float32) * inv_temp
    tgt = tl.load(tgt_ptr + row).to(tl.int64) - vocab_start
    p = tl.exp(z - tl.load(lse_ptr + row))
    g = tl.load(glp_ptr + row) * (tl.where(cols == tgt, 1.0, 0.0) - p)
    if HAS_ENT:
        g -= tl.load(gent_ptr + row) * p * (z - tl.load(mu_ptr + row))
    tl.store(ptrs, (g * inv_temp).to(z_ptr.dtype.element_ty), mask=ok)
