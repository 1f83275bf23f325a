"""Splitting an RL step into mini-batches (one optimizer update each) and combining their metrics."""
from __future__ import annotations

import pytest

from prco_mega.learner.config import LearnerConfig
from prco_mega.learner.policy import deal, mean_metrics


def test_deal_gives_every_mini_batch_a_share_of_each_group():
    # two tasks' groups of four, listed together as the rollout lists them
    items = ["a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3"]
    parts = deal(items, 4)
    assert parts == [["a0", "b0"], ["a1", "b1"], ["a2", "b2"], ["a3", "b3"]]
    assert sorted(x for p in parts for x in p) == sorted(items)


def test_deal_never_makes_an_empty_mini_batch():
    assert deal([1, 2, 3], 8) == [[1], [2], [3]]
    assert deal([1, 2, 3, 4, 5], 2) == [[1, 3, 5], [2, 4]]
    assert deal([7], 1) == [[7]]


def test_deal_refuses_zero_parts():
    with pytest.raises(ValueError, match=r"mini-batches \(0\)"):
        deal([1, 2], 0)


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
