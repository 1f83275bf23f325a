"""Fused linear log-prob + entropy over a vocab-parallel LM head, never materialising [T, V].

With z = hidden @ weight^T / temperature over the full vocabulary (weight: this rank's rows
[rank * V_local, (rank + 1) * V_local) of the head, hidden replicated over the TP group):
    logprob[t] = z[t, target[t]] - logsumexp(z[t])
    entropy[t] = logsumexp(z[t]) - sum_v softmax(z[t])_v * z[t, v]
Per-shard partial statistics (max, sum-exp, sum-exp * z, target logit) are reduced over the TP
group with two all_reduces (MAX, then one packed SUM).

Gradients (p = softmax(z), mu = sum p z): d logprob / d z_v = onehot_v - p_v and
d entropy / d z_v = -p_v (z_v - mu). FLOPs per design (LM-head GEMMs only):
    forward (fused Triton, logits on chip)        2 T H V
    backward, recomputing logits in token chunks   6 T H V  -> 8 T H V per step
    fused loss head (loss_head.py)                 6 T H V  (gradient in the forward pass)
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ._dispatch import check_impl, interpreting

DEFAULT_CHUNK_ELEMENTS = 1 << 27  # logits chunk budget: 256 MiB in bf16, independent of V


# ---------------------------------------------------------------- torch references
def linear_logprob_entropy_reference(hidden, weight, targets, temperature=1.0):
    """(logprob [T], entropy [T]) of the full (unsharded) head by plain torch autograd, in fp32.

    Materialises [T, V]: the ground truth the kernels are tested against.
    """
    z = (hidden.float() @ weight.float().t()) / temperature
    logp = torch.log_softmax(z, dim=-1)
    lp = logp.gather(-1, targets.long()[:, None]).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    return lp, ent


def chunk_stats_torch(z_chunk, targets, vocab_start, inv_temp):
    """Partial statistics [4, C] (m, s, w, tz) of logits rows [C, V_local] (torch version)."""
    z = z_chunk.float() * inv_temp
    m = z.max(dim=-1).values
    e = torch.exp(z - m[:, None])
    local = targets.long() - vocab_start
    on_shard = (local >= 0) & (local < z.shape[1])
    tz = torch.where(on_shard, z.gather(1, local.clamp(0, z.shape[1] - 1)[:, None]).squeeze(1), 0.0)
    return torch.stack([m, e.sum(-1), (e * z).sum(-1), tz])


def chunk_grad_torch(z_chunk, targets, vocab_start, inv_temp, lse, mu, g_lp, g_ent):
    """In-place d loss / d logits of rows [C, V_local] (formula in chunk_grad_kernel)."""
    z = z_chunk.float() * inv_temp
    p = torch.exp(z - lse[:, None])
    g = -g_lp[:, None] * p
    local = targets.long() - vocab_start
    rows = torch.nonzero((local >= 0) & (local < z.shape[1])).squeeze(1)
    g[rows, local[rows]] += g_lp[rows]
    if g_ent is not None:
        g -= g_ent[:, None] * p * (z - mu[:, None])
    z_chunk.copy_(g * inv_temp)


# ---------------------------------------------------------------- statistics plumbing
def combine_stats(stats):
    """Merge partial statistics [S, 4, T] over their first axis into [4, T] (exact rescaling)."""
    m = stats[:, 0].max(dim=0).values
    scale = torch.exp(stats[:, 0] - m)
    return torch.stack([m, (stats[:, 1] * scale).sum(0), (stats[:, 2] * scale).sum(0),
                        stats[:, 3].sum(0)])


def reduce_stats_tp(stats, process_group):
    """All-reduce partial statistics [4, T] of this vocab shard over the TP group (in place)."""
    if process_group is None or dist.get_world_size(process_group) == 1:
        return stats
    m_local = stats[0].clone()
    dist.all_reduce(stats[0], op=dist.ReduceOp.MAX, group=process_group)
    stats[1:3] *= torch.exp(m_local - stats[0])
    dist.all_reduce(stats[1:], op=dist.ReduceOp.SUM, group=process_group)
    return stats


def finish_stats(stats):
    """(logprob [T], entropy [T], lse [T], mu [T]) from global statistics [4, T]."""
    lse = stats[0] + torch.log(stats[1])
    mu = stats[2] / stats[1]
    return stats[3] - lse, lse - mu, lse, mu


def vocab_start_of(weight, process_group):
    """First global vocab id of this rank's shard (equal shards, Megatron's vocab-parallel layout)."""
    if process_group is None:
        return 0
    return dist.get_rank(process_group) * weight.shape[0]


def chunk_tokens_for(vocab_local, chunk_tokens=None):
    """Tokens per chunk: explicit, or as many as keep [chunk, V_local] within the element budget."""
    if chunk_tokens is not None:
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        return chunk_tokens
    return max(1, DEFAULT_CHUNK_ELEMENTS // max(1, vocab_local))


# ---------------------------------------------------------------- forward statistics
def _kernels():
    """The Triton kernels, imported on first use: `@triton.jit` reads TRITON_INTERPRET when it
    decorates them, and the interpreter may be switched on after this module is imported."""
    from . import _logprob_triton

    return _logprob_triton


def _fwd_blocks(T, V, device):
    """Tile sizes and vocab splits for the fused forward: enough programs to fill the GPU."""
    if interpreting():
        return 16, 32, 32, min(2, -(-V // 32))
    block_t, block_v, block_h = 64, 128, 64
    n_tiles = -(-V // block_v)
    n_tblocks = -(-T // block_t)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return block_t, block_v, block_h, max(1, min(n_tiles, -(-4 * sms // n_tblocks)))


def local_stats_triton(hidden, weight, targets, inv_temp, vocab_start):
    """Partial statistics [4, T] of this shard by the fused Triton kernel (no logits in memory)."""
    T, H = hidden.shape
    V = weight.shape[0]
    block_t, block_v, block_h, n_split = _fwd_blocks(T, V, hidden.device)
    n_tiles = -(-V // block_v)
    per_split = -(-n_tiles // n_split)
    n_split = -(-n_tiles // per_split)
    stats = torch.empty(n_split, 4, T, device=hidden.device, dtype=torch.float32)
    _kernels().fused_fwd_kernel[(-(-T // block_t), n_split)](
        hidden, weight, targets, stats, T, V, H, vocab_start, inv_temp, hidden.stride(0),
        weight.stride(0), per_split, BLOCK_T=block_t, BLOCK_V=block_v, BLOCK_H=block_h,
        UPCAST=interpreting(), IEEE=hidden.dtype == torch.float32,
        num_warps=8 if not interpreting() else 4, num_stages=3)
    return combine_stats(stats)


def chunk_stats(z_chunk, targets, vocab_start, inv_temp, impl):
    """Partial statistics [4, C] of materialised logits rows, by Triton or torch."""
    if impl == "torch":
        return chunk_stats_torch(z_chunk, targets, vocab_start, inv_temp)
    C, V = z_chunk.shape
    stats = torch.empty(4, C, device=z_chunk.device, dtype=torch.float32)
    _kernels().chunk_stats_kernel[(C,)](z_chunk, targets, stats, C, V, z_chunk.stride(0),
                                        vocab_start, inv_temp, BLOCK_V=64 if interpreting() else 2048)
    return stats


def chunk_grad(z_chunk, targets, vocab_start, inv_temp, lse, mu, g_lp, g_ent, impl):
    """Overwrite logits rows [C, V_local] with the gradient wrt the pre-temperature logits."""
    if impl == "torch":
        return chunk_grad_torch(z_chunk, targets, vocab_start, inv_temp, lse, mu, g_lp, g_ent)
    C, V = z_chunk.shape
    block = 64 if interpreting() else 2048
    _kernels().chunk_grad_kernel[(C, -(-V // block))](
        z_chunk, targets, lse, mu, g_lp, g_ent if g_ent is not None else g_lp, V, z_chunk.stride(0),
        vocab_start, inv_temp, HAS_ENT=g_ent is not None, BLOCK_V=block)


def local_stats(hidden, weight, targets, inv_temp, vocab_start, impl, chunk_tokens):
    """Partial statistics [4, T] of this shard: fused Triton kernel, or torch in token chunks."""
    if impl == "triton":
        return local_stats_triton(hidden, weight, targets, inv_temp, vocab_start)
    parts = []
    for a in range(0, hidden.shape[0], chunk_tokens):
        z = chunk_logits_fp32(hidden[a:a + chunk_tokens], weight)
        parts.append(chunk_stats_torch(z, targets[a:a + chunk_tokens], vocab_start, inv_temp))
    return torch.cat(parts, dim=1)


# ---------------------------------------------------------------- backward (recompute)
def backward_chunked(hidden, weight, targets, inv_temp, vocab_start, lse, mu, g_lp, g_ent, impl,
                     chunk_tokens, process_group):
    """(grad_hidden [T, H], grad_weight [V_local, H]) recomputing logits one token chunk at a time.

    grad_hidden is summed over the TP group (hidden is replicated across it); grad_weight stays
    local. grad_weight accumulates in fp32 so that many chunks do not round away bf16 bits.
    """
    grad_h = torch.empty_like(hidden)
    grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32)
    for a in range(0, hidden.shape[0], chunk_tokens):
        sl = slice(a, a + chunk_tokens)
        z = chunk_logits_fp32(hidden[sl], weight)  # [C, V_local]: the only vocab-sized buffer
        chunk_grad(z, targets[sl], vocab_start, inv_temp, lse[sl], mu[sl], g_lp[sl],
                   None if g_ent is None else g_ent[sl], impl)
        grad_logits_into(z, hidden[sl], weight, grad_h[sl], grad_w)
    if process_group is not None and dist.get_world_size(process_group) > 1:
        dist.all_reduce(grad_h, group=process_group)
    return grad_h, grad_w.to(weight.dtype)


def chunk_logits_fp32(hidden_chunk, weight):
    """[C, V_local] fp32 logits of one token chunk.

    The buffer is fp32 even for bf16 inputs: stored in bf16, softmax(z) would carry ~|z| 2^-9
    absolute error into the gradient (1-17% relative on small, mostly clipped PPO problems). The
    GEMM still runs on bf16 operands; only its output is kept at fp32 (2x one chunk's buffer).
    """
    if hidden_chunk.dtype == torch.float32:
        return hidden_chunk @ weight.t()
    return mm_fp32_out(hidden_chunk, weight.t())


def grad_logits_into(dz, hidden_chunk, weight, grad_h_chunk, grad_w):
    """grad_h_chunk [C, H] = dz [C, V] @ weight; grad_w [V, H] (fp32) += dz^T @ hidden_chunk.

    dz is fp32; for bf16 weights both GEMMs take it rounded once to bf16 (tensor cores, as any
    bf16 backward) and grad_w still accumulates in fp32. An fp32 operand here would fall off the
    tensor cores: measured 3-4x slower on an H100.
    """
    if weight.dtype == torch.float32:
        torch.mm(dz, weight, out=grad_h_chunk)
        grad_w.addmm_(dz.t(), hidden_chunk)
        return
    dz_low = dz.to(weight.dtype)
    torch.mm(dz_low, weight, out=grad_h_chunk)
    grad_w += mm_fp32_out(dz_low.t(), hidden_chunk)


def mm_fp32_out(a, b):
    """a @ b of low-precision operands with an fp32 result (fp32 accumulation, no bf16 rounding
    of the output)."""
    if a.is_cuda:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (RuntimeError, TypeError):  # torch without mm(out_dtype=)
            pass
    return a.float() @ b.float()


class _LinearLogprobEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, process_group, impl, chunk_tokens):
        inv_temp = 1.0 / temperature
        v0 = vocab_start_of(weight, process_group)
        stats = local_stats(hidden, weight, targets, inv_temp, v0, impl, chunk_tokens)
        lp, ent, lse, mu = finish_stats(reduce_stats_tp(stats, process_group))
        ctx.save_for_backward(hidden, weight, targets, lse, mu)
        ctx.cfg = (inv_temp, v0, impl, chunk_tokens, process_group)
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        hidden, weight, targets, lse, mu = ctx.saved_tensors
        inv_temp, v0, impl, chunk_tokens, group = ctx.cfg
        g_lp = torch.zeros_like(lse) if g_lp is None else g_lp.float().contiguous()
        g_ent = None if g_ent is None else g_ent.float().contiguous()
        gh, gw = backward_chunked(hidden, weight, targets, inv_temp, v0, lse, mu, g_lp, g_ent, impl,
                                  chunk_tokens, group)
        return gh, gw, None, None, None, None, None


def linear_logprob_entropy(hidden, weight, targets, *, temperature=1.0, process_group=None,
                           chunk_tokens=None, impl="triton"):
    """(logprob [T], entropy [T]) of targets [T] under hidden [T, H] @ weight [V_local, H]^T / temperature.

    Differentiable in hidden and weight. process_group: the TP group over which the vocabulary is
    split (None: weight is the whole head). Forward: one fused Triton kernel (impl="triton") or
    torch in token chunks (impl="torch"); backward recomputes logits per token chunk (8 T H V in all).
    """
    check_impl(impl, hidden.device)
    validate(hidden, weight, targets, temperature)
    chunk = chunk_tokens_for(weight.shape[0], chunk_tokens)
    return _LinearLogprobEntropy.apply(hidden.contiguous(), weight.contiguous(), targets.contiguous(),
                                       float(temperature), process_group, impl, chunk)


def validate(hidden, weight, targets, temperature):
    """Raise ValueError on shapes or temperature the kernels cannot take."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"need hidden [T, H] and weight [V, H], got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets shape {tuple(targets.shape)} must be [T] = [{hidden.shape[0]}]")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
