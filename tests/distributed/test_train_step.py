"""The PRCO step through Megatron-Core's schedules (tiny Qwen2.5-VL with images, fp32, gloo):

- one rank: the loss equals `prco_loss` computed on the whole step outside Megatron's schedule;
  1 vs 4 packed micro-batches give the same loss and gradients; with learner-recomputed old
  log-probs nothing is clipped and each role's loss is -sum(A)/D;
- two ranks: TP=2, PP=2 (1F1B), PP=2 x VPP=2 (interleaved, also with 3 micro-batches, which
  the schedule fills up to 4) and DP=2 give the one-rank loss, log-probs, gradient norm and
  weights after one optimizer step (distributed Adam, clipping).

Two launches (1 rank, then 2 ranks), ~30 s on 2 shared cores. The LR schedule and the learner
config are checked without launches.
"""
from __future__ import annotations

import pytest

from conftest import run_torchrun
from prco_mega.learner.config import LearnerConfig, resolve_precision
from prco_mega.learner.optim import lr_at

LR = 1e-3  # train_step_common.learner_config
LAYOUTS = ["tp2", "pp2", "pp2_vpp2", "dp2", "pp2_vpp2_3mb"]


@pytest.fixture(scope="module")
def ref_file(tmp_path_factory):
    return tmp_path_factory.mktemp("train_step") / "reference.pt"


@pytest.fixture(scope="module")
def reference(ref_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("train_step_reference")
    return run_torchrun("train_step_reference.py", out, nproc=1, args=["--ref", str(ref_file)])


@pytest.fixture(scope="module")
def parity(reference, ref_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("train_step_parity")
    return run_torchrun("train_step_parity.py", out, nproc=2, args=["--ref", str(ref_file)])


@pytest.mark.distributed
def test_schedule_loss_equals_the_direct_prco_loss(reference):
    assert reference["micro_batches"] >= 3
    for key in ("loss_one_mb", "loss_many_mb", "train_step_loss"):
        assert reference[key] == pytest.approx(reference["loss_direct"], abs=1e-6), key


@pytest.mark.distributed
def test_micro_batching_keeps_the_gradients(reference):
    assert reference["grad_max_abs"] > 1e-3  # the step has a real gradient to compare
    assert reference["grad_max_diff"] < 1e-6 * reference["grad_max_abs"] + 1e-8


@pytest.mark.distributed
def test_recomputed_old_logprobs_give_ratio_one(reference):
    for role, r in reference["recompute"].items():
        assert r["clip_frac"] == 0.0, role
        assert r["got"] == pytest.approx(r["want"], abs=1e-6), role


@pytest.mark.distributed
def test_step_reports_metrics(reference):
    m = reference["metrics"]
    assert m["update_successful"] == 1.0 and m["lr"] == LR and m["grad_norm"] > 0
    assert m["unassigned_tokens"] == 0.0
    assert m["loss"] == pytest.approx(m["pg_loss"] + m["kl_loss"], abs=1e-7)


@pytest.mark.distributed
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_reproduces_the_one_rank_step(parity, layout):
    r = parity[layout]
    assert r["loss_diff"] < 1e-6
    assert r["grad_norm_diff"] < 1e-5
    if layout in ("tp2", "pp2", "pp2_vpp2"):  # same micro-batches as the reference
        assert r["logprob_diff"] < 1e-5
    # The update is ~lr (Adam): weights agree to a thousandth of one update.
    assert r["weight_diff"] < 1e-3 * LR, r["worst_param"]


@pytest.mark.distributed
def test_data_parallel_and_budget_split_the_step(parity):
    assert parity["dp2"]["micro_batches"] < parity["tp2"]["micro_batches"]
    assert parity["pp2_vpp2_3mb"]["micro_batches"] == 3


# ----------------------------------------------------------------------------- no launch
def _lr(step, style, warmup=2, decay=6):
    return lr_at(step, lr=1.0, min_lr=0.1, warmup_steps=warmup, decay_steps=decay,
                 decay_style=style)


def test_lr_warms_up_linearly_then_decays_to_min_lr():
    assert [_lr(s, "linear") for s in range(8)] == pytest.approx(
        [0.5, 1.0, 1.0, 0.775, 0.55, 0.325, 0.1, 0.1])
    # cosine: halfway through the decay it is the midpoint of lr and min_lr
    assert _lr(4, "cosine") == pytest.approx(0.55)
    assert _lr(6, "cosine") == pytest.approx(0.1) and _lr(100, "cosine") == pytest.approx(0.1)
    assert [_lr(s, "constant") for s in (0, 1, 5, 50)] == pytest.approx([0.5, 1.0, 1.0, 1.0])
    assert _lr(0, "linear", warmup=0) == 1.0


def test_learner_config_rejects_bad_values_with_their_numbers():
    cfg = LearnerConfig()
    cfg.validate()
    cfg.schedule.warmup_steps, cfg.schedule.decay_steps = 10, 5
    with pytest.raises(ValueError, match=r"decay_steps \(5\) must be >= warmup_steps \(10\)"):
        cfg.validate()
    cfg = LearnerConfig()
    cfg.batching.micro_batch_tokens, cfg.batching.pad_to_multiple = 100, 8
    with pytest.raises(ValueError,
                       match=r"pad_to_multiple \(8\) must divide micro_batch_tokens \(100\)"):
        cfg.validate()


def test_precision_auto_is_bf16_only_with_cuda():
    assert resolve_precision("auto", cuda_available=True) == "bf16"
    assert resolve_precision("auto", cuda_available=False) == "fp32"
    assert resolve_precision("bf16", cuda_available=False) == "bf16"
