"""The planner's phase times (`cluster/timing.py`): each formula against a hand-computed case, and
how the step's phases respond to the layout and the stated rates."""
from __future__ import annotations

from pathlib import Path

import pytest

from prco_mega.cluster.dims import model_dims, total_params
from prco_mega.cluster.plan import plan_config
from prco_mega.cluster.sizes import ModelDims
from prco_mega.cluster.timing import experts_touched, forward_flops

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
QWEN25_7B_TEXT = ModelDims("qwen2.5-7b", hidden=3584, intermediate=18944, layers=28, heads=28,
                           kv_heads=4, vocab=152064, tie_embeddings=False)


def _row(plan, prefix: str) -> float:
    rows = [secs for name, secs, _ in plan.times.rows if name.startswith(prefix)]
    assert len(rows) == 1, [name for name, _, _ in plan.times.rows]
    return rows[0]


def test_forward_flops_count_matmuls_and_causal_attention():
    m, s = QWEN25_7B_TEXT, 1000
    matmul = total_params(m) - m.vocab * m.hidden  # the input embedding is a lookup
    assert forward_flops(m, s, 0) == 2 * matmul * s + 2 * 28 * 3584 * s**2


def test_a_decode_batch_reaches_nearly_every_expert():
    m = model_dims("qwen3-vl-30b-a3b")
    assert experts_touched(m, 1) == pytest.approx(8 / 128)
    assert experts_touched(m, 256) > 0.99
    assert experts_touched(QWEN25_7B_TEXT, 1) == 1.0


def test_tokens_trained_are_every_prompt_and_response_at_the_caps():
    plan = plan_config(str(CONFIGS / "qwen3vl_30b_a3b_h100x16.yaml"))
    prompt = 1024 + 128  # cluster.timing's image and text tokens
    observer = 128 * 8 * (prompt + 1024)
    solver = 128 * 8 * 8 * (prompt + 1024 + 2048)  # the Solver's prompt holds the caption
    assert plan.times.workload.tokens == observer + solver
    t = plan.times
    assert t.tokens_per_s_per_gpu == pytest.approx((observer + solver) / t.step / 16)


def test_the_offloaded_optimizer_adds_its_copies_and_a_cpu_adam_to_the_step():
    path = str(CONFIGS / "qwen3vl_30b_a3b_h100x8.yaml")
    off = plan_config(path)
    on_gpu = plan_config(path, ["learner.optim.cpu_offload=false",
                                "learner.optim.precision_aware=false"])
    copies, adam = _row(off, "optimizer on host: gradients"), _row(off, "optimizer on host: CPU")
    assert off.times.step == pytest.approx(on_gpu.times.step + copies + adam)
    # CPU Adam: the node's offloaded parameters (the host row's 16 B each) x 28 B at 307 GB/s
    params = off.host[0].bytes / 16
    assert adam == pytest.approx(params * 28 / 307e9)
    # copies: one GPU's shard, 4 B down and 4 B up, at 50 GB/s
    assert copies == pytest.approx(params / 8 * 8 / 50e9)


def test_learner_time_scales_with_the_assumed_mfu():
    path = str(CONFIGS / "qwen3vl_30b_a3b_h100x8.yaml")
    base, fast = plan_config(path), plan_config(path, ["cluster.timing.learner_mfu=0.5"])
    assert _row(fast, "learner passes") == pytest.approx(_row(base, "learner passes") / 2)
    assert _row(fast, "sampling, Solver") == _row(base, "sampling, Solver")


def test_separate_engines_with_staleness_overlap_sampling_and_learning():
    path = str(CONFIGS / "qwen3vl_235b_a22b_h100x192.yaml")
    sync, overlapped = plan_config(path), plan_config(path, ["rollout.max_staleness=1"])
    t, o = sync.times, overlapped.times
    wire = _row(sync, "weight sync")
    assert t.step == pytest.approx(t.sample + t.learn + wire)
    assert o.step == pytest.approx(max(o.sample, o.learn) + wire)
    assert t.workload.total_gpus == 192 and t.workload.engines == 8
