"""Fused linear log-prob + entropy: forward and backward equal full-softmax torch autograd."""
from __future__ import annotations

import pytest
import torch
from _util import rel_err

import prco_kernels as pk

# V = 101 is not a multiple of any tile (32/64 in the interpreter); H = 40 not of BLOCK_H = 32.
T, H, V = 37, 40, 101


def make_inputs(seed, dtype, device, t=T, v=V):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(t, H, generator=g).to(device, dtype).requires_grad_(True)
    weight = (0.4 * torch.randn(v, H, generator=g)).to(device, dtype).requires_grad_(True)
    targets = torch.randint(0, v, (t,), generator=g)
    targets[:2] = torch.tensor([0, v - 1])  # both vocab edges, where tile masking matters
    return hidden, weight, targets.to(device)


def reference(hidden, weight, targets, temperature, g_lp, g_ent):
    h = hidden.detach().double().requires_grad_(True)
    w = weight.detach().double().requires_grad_(True)
    z = (h @ w.t()) / temperature
    logp = torch.log_softmax(z, -1)
    lp = logp.gather(-1, targets.long()[:, None]).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    ((lp * g_lp).sum() + (ent * g_ent).sum()).backward()
    return lp, ent, h.grad, w.grad


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logprob_entropy_and_grads_match_full_softmax(impl, dtype, device):
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    hidden, weight, targets = make_inputs(seed, dtype, device)
    temperature = 0.7
    lp, ent = pk.linear_logprob_entropy(hidden, weight, targets, temperature=temperature,
                                        chunk_tokens=16, impl=impl)  # 3 chunks, the last partial
    g_lp, g_ent = torch.randn(T, dtype=torch.float64), torch.randn(T, dtype=torch.float64)
    ((lp * g_lp.to(device)).sum() + (ent * g_ent.to(device)).sum()).backward()
    r_lp, r_ent, r_gh, r_gw = reference(hidden, weight, targets, temperature, g_lp.to(device),
                                        g_ent.to(device))
    # bf16 inputs are multiplied exactly and accumulated in fp32 on both paths (the logits chunk is
    # fp32), so the forward is fp32-exact; the gradient is rounded once to bf16 for the hidden GEMM
    assert rel_err(lp, r_lp) < 1e-5, f"seed {seed}"
    assert rel_err(ent, r_ent) < 1e-5, f"seed {seed}"
    grad_tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert rel_err(hidden.grad, r_gh) < grad_tol, f"seed {seed}"
    assert rel_err(weight.grad, r_gw) < grad_tol, f"seed {seed}"
    assert hidden.grad.dtype == dtype and weight.grad.dtype == dtype


def test_only_logprob_used_gives_logprob_gradient(device):
    hidden, weight, targets = make_inputs(3, torch.float32, device)
    lp, _ = pk.linear_logprob_entropy(hidden, weight, targets, chunk_tokens=64)
    lp.sum().backward()
    ones = torch.ones(T, device=device)
    _, _, r_gh, r_gw = reference(hidden, weight, targets, 1.0, ones, 0 * ones)
    assert rel_err(hidden.grad, r_gh) < 1e-5
    assert rel_err(weight.grad, r_gw) < 1e-5


def test_logprobs_are_normalised_over_the_vocabulary(device):
    hidden, weight, _ = make_inputs(5, torch.float32, device, t=4)
    with torch.no_grad():
        every = torch.arange(V, device=device)
        lp, _ = pk.linear_logprob_entropy(hidden.repeat_interleave(V, 0), weight, every.repeat(4))
    assert torch.allclose(lp.exp().view(4, V).sum(-1).cpu(), torch.ones(4), atol=1e-5)


def test_wrong_shapes_and_temperature_are_rejected(device):
    hidden, weight, targets = make_inputs(1, torch.float32, device)
    with pytest.raises(ValueError, match="temperature"):
        pk.linear_logprob_entropy(hidden, weight, targets, temperature=0.0)
    with pytest.raises(ValueError, match="targets shape"):
        pk.linear_logprob_entropy(hidden, weight, targets[:-1])


def test_triton_request_without_runnable_triton_raises(monkeypatch):
    """Asking for kernels where they cannot run is an error, never a silent torch fallback."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    hidden, weight, targets = make_inputs(1, torch.float32, "cpu")
    assert not pk.available("cpu")
    with pytest.raises(RuntimeError, match="impl='triton'"):
        pk.linear_logprob_entropy(hidden, weight, targets, impl="triton")
    with pytest.raises(ValueError, match="impl must be one of"):
        pk.linear_logprob_entropy(hidden, weight, targets, impl="cuda")
