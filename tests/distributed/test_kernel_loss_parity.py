"""The learner's two PPO loss paths agree (`TorchPPO`, and `FusedPPO` in prco_mega/learner/loss_head.py).

One 2-rank launch (gloo, fp32, tiny Qwen2.5-VL with images, Triton's CPU interpreter; ~35 s on 2
shared cores): at TP=1 (DP=2), TP=2 and PP=2, the fused Triton loss head (hidden states + output
weight shard, no logits) gives the torch path's step loss, metrics and gradients of every
parameter, for token-level loss with dual clip, k3 KL and a temperature, and for sequence-level
loss on TIS-rewritten batches; a `train_step` on the fused path with `tis_cap`, its TIS weights
and mismatch statistics taken from its own forward, reproduces the hand-computed TIS loss and the
mismatch of a separate pass. Without launches: the fused path where Triton cannot run raises.
"""
from __future__ import annotations

import pytest
import torch
from conftest import run_torchrun

from prco_mega.learner.loss_paths import LossSettings, make_loss_path
from prco_mega.types import Role, TrainBatch

LAYOUTS = ["tp1", "tp2", "pp2"]
VARIANTS = ["token_kl", "sequence_tis"]


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    out = tmp_path_factory.mktemp("kernel_loss_parity")
    return run_torchrun("kernel_loss_parity.py", out, nproc=2)


@pytest.mark.distributed
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_triton_loss_head_gives_the_torch_loss_and_gradients(parity, layout, variant):
    r = parity[layout][variant]
    assert r["micro_batches"] >= 2
    assert r["grad_max_abs"] > 1e-2  # a real gradient to compare
    assert r["loss_triton"] == pytest.approx(r["loss_torch"], abs=1e-6)
    assert r["grad_max_diff"] < 1e-5 * r["grad_max_abs"], r["worst"]
    # The fused path reports the kernel's own sums: the losses by name, clipped/weighted tokens
    shared = r["metrics_triton"].keys() & r["metrics_torch"].keys()
    assert {"loss", "pg_loss", "kl_loss", "observer/pg_loss", "solver/pg_loss"} <= shared
    if variant == "token_kl":
        assert {"observer/kl", "solver/kl"} <= shared
    for key in shared:
        assert r["metrics_triton"][key] == pytest.approx(r["metrics_torch"][key], abs=1e-6), key
    assert r["metrics_torch"]["unassigned_tokens"] == 0.0
    clip = sum(v for k, v in r["metrics_torch"].items() if k.endswith("/clip_frac"))
    clipped = sum(v for k, v in r["metrics_triton"].items() if k.endswith("/clipped_tokens"))
    assert clip > 0 and clipped > 0  # the clip branches (and their zero gradients) are exercised
    tokens = sum(v for k, v in r["metrics_triton"].items() if k.endswith("/tokens"))
    assert tokens == r["metrics_torch"]["loss_tokens"]


@pytest.mark.distributed
@pytest.mark.parametrize("layout", LAYOUTS)
def test_train_step_with_tis_on_the_triton_path(parity, layout):
    r = parity[layout]["tis_train_step"]
    assert r["max_raw_weight"] > 1.5  # the cap (1.5) binds on some tokens
    assert r["clipped_tokens"] == 0.0  # learner old log-probs = current weights: ratio 1
    assert r["loss"] == pytest.approx(r["want"], abs=1e-6)
    assert r["mismatch_abs_sum"] > 0.1  # the batches' rollout log-probs are not the learner's
    assert r["mismatch_mean_abs"] == pytest.approx(r["mismatch_abs_sum"], rel=1e-5)
    assert r["update_successful"] == 1.0


# ----------------------------------------------------------------------------- no launch
def _batch(T=6):
    return TrainBatch(tokens=torch.arange(T), cu_seqlens=torch.tensor([0, T], dtype=torch.int32),
                      role_ids=torch.full((T,), int(Role.SOLVER), dtype=torch.int8),
                      loss_mask=torch.tensor([0.0] * 3 + [1.0] * (T - 3)),
                      old_logprobs=torch.full((T,), -2.0), advantages=torch.ones(T),
                      role_denominators={Role.SOLVER: float(T - 3)})


def test_triton_impl_raises_where_triton_cannot_run(monkeypatch):
    from prco_mega.learner import loss_head

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # CPU without the interpreter
    hidden, weight = torch.randn(6, 8), torch.randn(16, 8)
    with pytest.raises(RuntimeError, match="impl='triton'.*cannot run on device cpu"):
        loss_head.fused_prco_loss(hidden, weight, _batch(), LossSettings())
    # the run refuses when its loss path is chosen, before any model is built
    with pytest.raises(RuntimeError, match="impl='triton'"):
        make_loss_path("ppo", "triton", LossSettings(), "cpu")


def test_loss_paths_reject_unknown_impl_bad_cap_and_fused_sft():
    with pytest.raises(ValueError, match="'cuda'"):
        make_loss_path("ppo", "cuda", LossSettings())
    with pytest.raises(ValueError, match=r"tis_cap \(0.0\)"):
        LossSettings(tis_cap=0.0)
    with pytest.raises(ValueError, match="objective 'sft' runs with impl 'torch'"):
        make_loss_path("sft", "torch", LossSettings(tis_cap=2.0))
