"""Splitting an RL step into mini-batches (one optimizer update each) and combining their metrics."""
from __future__ import annotations

import pytest

from prco_mega.learner.config import LearnerConfig
from prco_mega.learner.packing import SequenceShape, plan_step
from prco_mega.learner.policy import mean_metrics


def _parts(n: int, k: int) -> list[list[int]]:
    """The trajectory ids of each mini-batch of a step of `n` equal trajectories in `k` parts."""
    shapes = [SequenceShape(role=0, tokens=4, response=2)] * n
    plan = plan_step(shapes, mini_batches=k, token_budget=64, dp_size=1)
    return [sorted(i for mb in micro[0] for i in mb) for _, micro in plan.mini_batches]


def test_mini_batches_are_dealt_so_each_gets_a_share_of_each_group():
    # two tasks' groups of four, listed together as the rollout lists them
    parts = _parts(8, 4)
    assert parts == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert sorted(x for p in parts for x in p) == list(range(8))


def test_no_mini_batch_is_empty():
    assert _parts(3, 8) == [[0], [1], [2]]
    assert _parts(5, 2) == [[0, 2, 4], [1, 3]]
    assert _parts(1, 1) == [[0]]


def test_zero_mini_batches_are_refused():
    with pytest.raises(ValueError, match=r"mini-batches \(0\)"):
        _parts(2, 0)


def test_each_mini_batch_has_its_own_global_denominators_and_every_id_one_owner():
    shapes = [SequenceShape(role=i % 2, tokens=10 + i, response=1 + i) for i in range(6)]
    plan = plan_step(shapes, mini_batches=2, token_budget=32, dp_size=2, level="token")
    (den0, _), (den1, _) = plan.mini_batches
    assert den0 == {0: 1 + 3 + 5} and den1 == {1: 2 + 4 + 6}  # ids 0, 2, 4 and 1, 3, 5
    assert sorted(plan.owner()) == list(range(6)) and set(plan.owner().values()) == {0, 1}


def test_mean_metrics_averages_and_keeps_first_lr_and_worst_update():
    updates = [{"loss": 1.0, "grad_norm": 2.0, "lr": 1e-4, "update_successful": 1.0,
                "observer/pg_loss": 0.5},
               {"loss": 3.0, "grad_norm": 4.0, "lr": 2e-4, "update_successful": 0.0}]
    out = mean_metrics(updates)
    assert out["loss"] == 2.0 and out["grad_norm"] == 3.0
    assert out["observer/pg_loss"] == 0.5  # reported by one update only: its own value
    assert out["lr"] == 1e-4 and out["update_successful"] == 0.0 and out["mini_batches"] == 2.0


def test_config_refuses_zero_mini_batches():
    cfg = LearnerConfig()
    cfg.batching.mini_batches = 0
    with pytest.raises(ValueError, match=r"mini_batches \(0\) must be >= 1"):
        cfg.validate()
