"""Vocab-parallel reduction: 2 gloo ranks, each holding half the vocabulary, equal one rank."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _util import log_ratios_away_from_clip, rel_err, sum_err, tol

import prco_kernels as pk

T, H, V = 21, 24, 2 * 53  # each rank's 53 rows: not a multiple of any tile


@pytest.mark.distributed
def test_two_rank_vocab_parallel_equals_single_rank(tmp_path):
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
    data = {"hidden": torch.randn(T, H, generator=g), "weight": 0.4 * torch.randn(V, H, generator=g),
            "targets": torch.randint(0, V, (T,), generator=g), "g_lp": torch.randn(T, generator=g),
            "g_ent": torch.randn(T, generator=g), "old": -4.0 + torch.randn(T, generator=g),
            "adv": torch.randn(T, generator=g), "w": torch.rand(T, generator=g) / T}
    data["targets"][:2] = torch.tensor([52, 53])  # last row of rank 0, first of rank 1
    lp0 = pk.linear_logprob_entropy_reference(data["hidden"], data["weight"], data["targets"], 0.8)[0]
    data["old"] = lp0 - log_ratios_away_from_clip(T, g)
    torch.save(data, tmp_path / "inputs.pt")
    env = dict(os.environ, OMP_NUM_THREADS="1", TRITON_INTERPRET="1")
    worker = Path(__file__).with_name("tp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(worker), str(tmp_path)]  # the standalone rendezvous picks a free port itself
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    h = data["hidden"].clone().requires_grad_(True)
    w = data["weight"].clone().requires_grad_(True)
    lp, ent = pk.linear_logprob_entropy_reference(h, w, data["targets"], 0.8)
    ((lp * data["g_lp"]).sum() + (ent * data["g_ent"]).sum()).backward()
    fn = pk.ppo_kl_loss_fn(data["old"], data["adv"], data["w"], entropy_coef=0.01, impl="torch")
    loss, lh_gh, lh_gw = head_reference(data, fn)
    # the loss sums +- terms: its error is bounded by the terms' magnitudes
    magnitude = (data["w"] * data["adv"].abs() * torch.exp(lp.detach() - data["old"])).sum() + 0.05
    for (impl, dtype, design), _ in ranks[0].items():
        for r in range(2):
            got = ranks[r][impl, dtype, design]
            gw_full = torch.cat([ranks[0][impl, dtype, design][3], ranks[1][impl, dtype, design][3]])
            if design == "recompute":
                assert rel_err(got[0], lp) < tol(dtype) and rel_err(got[1], ent) < tol(dtype)
                assert rel_err(got[2], h.grad) < tol(dtype), (impl, dtype, r)
                assert rel_err(gw_full, w.grad) < tol(dtype), (impl, dtype)
            else:
                assert sum_err(got[0], loss, magnitude) < tol(dtype) and rel_err(got[1], lp) < tol(dtype)
                grad_tol = 1e-5 if dtype == torch.float32 else 0.15  # see test_loss_head
                assert rel_err(got[2], lh_gh) < grad_tol, (impl, dtype, r)
                assert rel_err(gw_full, lh_gw) < grad_tol, (impl, dtype)


def head_reference(data, loss_fn):
    """Loss of the PPO head and its gradients on one rank by autograd through the full softmax."""
    h = data["hidden"].clone().requires_grad_(True)
    w = data["weight"].clone().requires_grad_(True)
    lp, ent = pk.linear_logprob_entropy_reference(h, w, data["targets"], 0.8)
    loss, _ = pk.ppo_kl_loss_reference(lp, data["old"], data["adv"], data["w"])
    loss = loss - 0.01 * (data["w"] * ent).sum()
    loss.backward()
    return loss.detach(), h.grad, w.grad
