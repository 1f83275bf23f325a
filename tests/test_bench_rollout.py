"""tools/bench_rollout.py's arithmetic on hand-made records: step wall times, idle fractions,
lag histograms and length quantiles as the table prints them, and the schedule model
`--estimate` uses (today's engine worker meets the learner at every hand-over and sync, so a
deeper queue cannot absorb a slow step; an engine that never waits but for the bound can)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_rollout", ROOT / "tools" / "bench_rollout.py")
bench = sys.modules["bench_rollout"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(bench)


def test_quantiles_are_nearest_rank():
    assert bench.quantiles(list(range(10, 0, -1))) == (5, 9, 10)
    assert bench.quantiles([7]) == (7, 7, 7)


def test_step_walls_first_from_timers_then_line_gaps():
    rows = [{"time/wait": 1.0, "time/learn": 2.0, "time/sync": 0.5}, {}, {}]
    assert bench.step_walls(rows, [10.0, 13.0, 17.0]) == [3.5, 3.0, 4.0]


def test_idle_fractions_charge_sync_beyond_the_transfer_to_the_learner():
    # on-policy: the learner waits while the engine samples, the engine while the learner learns
    rows = [{"time/rollout": 3.0, "time/score": 0.0, "time/learn": 1.0, "time/sync": 0.1}] * 2
    engine, learner = bench.idle_fractions(rows, [4.2, 4.2], transfer=0.1)
    assert engine == pytest.approx(1 - 3.1 / 4.2)
    assert learner == pytest.approx(1 - 1.1 / 4.2)
    # sampling ahead: the learner's send waited 1.9 s for the engine's receive
    rows = [{"time/rollout": 3.0, "time/learn": 1.0, "time/sync": 2.0}]
    engine, learner = bench.idle_fractions(rows, [3.1], transfer=0.1)
    assert engine == pytest.approx(0.0)
    assert learner == pytest.approx(1 - 1.1 / 3.1)


def test_lag_histograms():
    rows = [{"train/policy_lag": float(k)} for k in (0, 1, 2, 2)]
    assert bench.lag_counts(rows) == "0:1 1:1 2:2"
    assert bench.trajectory_lags(rows) is None
    rows = [{"train/policy_lag_hist/0": 1.0},
            {"train/policy_lag_hist/1": 0.5, "train/policy_lag_hist/10+": 0.5}]
    assert bench.trajectory_lags(rows) == "0:0.50 1:0.25 10+:0.25"


def test_read_lengths_from_saved_rollouts(tmp_path):
    tasks = [{"captions": [{"tokens": 5, "answers": [{"tokens": 2}, {"tokens": 9}]},
                           {"tokens": 7, "answers": [{"tokens": 3}]}], "answers": []}]
    for step in (1, 0):
        (tmp_path / f"step_{step:08d}").mkdir()
        (tmp_path / f"step_{step:08d}" / "records.json").write_text(
            json.dumps({"step": step, "tasks": tasks[:step + 1]}))
    assert bench.read_lengths(tmp_path) == [([5, 7], [2, 9, 3]), ([5, 7], [2, 9, 3])]


def test_makespan_the_long_sequence_started_last_sets_the_end():
    assert bench.makespan([5, 1, 1, 1], slots=2) == 5
    assert bench.makespan([1, 1, 1, 5], slots=2) == 6
    assert bench.makespan([4, 4], slots=8) == 4


def test_schedules_on_policy_are_the_sum_and_one_step_overlaps():
    sample, learn = [2.0] * 4, [1.0] * 4
    for schedule in (bench.blocking_schedule, bench.free_schedule):
        assert schedule(sample, learn, 0.5, 0) == [3.5, 7.0, 10.5, 14.0]
    assert bench.blocking_schedule(sample, learn, 0.0, 1) == [4.0, 6.0, 8.0, 9.0]
    assert bench.free_schedule(sample, learn, 0.0, 1) == [3.0, 5.0, 7.0, 9.0]


def test_a_deeper_queue_absorbs_a_slow_step_only_without_the_blocking_receive():
    sample, learn = [1.0, 1.0, 4.0, 1.0, 1.0, 1.0], [2.0] * 6  # the engine is faster but once
    assert bench.blocking_schedule(sample, learn, 0.0, 1)[-1] == 15.0
    assert bench.blocking_schedule(sample, learn, 0.0, 2)[-1] == 16.0  # samples 1 and 2 first
    assert bench.free_schedule(sample, learn, 0.0, 1)[-1] == 15.0
    assert bench.free_schedule(sample, learn, 0.0, 2)[-1] == 14.0
    # the bound is not what holds it now: steps 0-2 take the engine 6 s, the learner wants step 2
    # at 5 s
    assert bench.free_schedule(sample, learn, 0.0, 4)[-1] == 14.0
