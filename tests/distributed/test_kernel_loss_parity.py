"""The learner's two loss heads agree (`LossSettings.impl`, prco_mega/learner/loss_head.py).

One 2-rank launch (gloo, fp32, tiny Qwen2.5-VL with images, Triton's CPU interpreter; ~35 s on 2
shared cores): at TP=1 (DP=2), TP=2 and PP=2, the fused Triton loss head (hidden states + output
weight shard, no logits) gives the torch path's step loss, metrics and gradients of every
parameter, for token-level loss with dual clip, k3 KL and a temperature, and for sequence-level
loss on TIS-rewritten batches; `train_step` with impl="triton" and `tis_cap` reproduces the
hand-computed TIS loss. Without launches: impl="triton" where Triton cannot run raises.
"""
from __future__ import annotations

import pytest
import torch
from conftest import run_torchrun

from prco_mega.learner.train_step import LossSettings
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
    assert r["metrics_triton"].keys() == r["metrics_torch"].keys()
    for key, value in r["metrics_torch"].items():
        assert r["metrics_triton"][key] == pytest.approx(value, abs=1e-6), key
    assert r["metrics_torch"]["unassigned_tokens"] == 0.0
    clip = sum(v for k, v in r["metrics_torch"].items() if k.endswith("/clip_frac"))
    assert clip > 0  # the clip branches (and their zero gradients) are exercised


@pytest.mark.distributed
@pytest.mark.parametrize("layout", LAYOUTS)
def test_train_step_with_tis_on_the_triton_path(parity, layout):
    r = parity[layout]["tis_train_step"]
    assert r["max_raw_weight"] > 1.5  # the cap (1.5) binds on some tokens
    assert r["clip_frac"] == 0.0  # learner old log-probs = current weights: every ratio is 1
    assert r["loss"] == pytest.approx(r["want"], abs=1e-6)
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
    from prco_mega.learner.train_step import train_step

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # CPU without the interpreter
    settings = LossSettings(impl="triton")
    hidden, weight = torch.randn(6, 8), torch.randn(16, 8)
    with pytest.raises(RuntimeError, match="impl='triton'.*cannot run on device cpu"):
        loss_head.fused_prco_loss(hidden, weight, _batch(), settings)
    # the step refuses before any forward pass (no model needed to find out)
    with pytest.raises(RuntimeError, match="impl='triton'"):
        train_step([], None, None, [_batch()], settings, pg=None)


def test_loss_settings_reject_unknown_impl_and_bad_cap():
    with pytest.raises(ValueError, match="'cuda'"):
        LossSettings(impl="cuda")
    with pytest.raises(ValueError, match=r"tis_cap \(0.0\)"):
        LossSettings(tis_cap=0.0)
