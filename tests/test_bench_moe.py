"""tools/bench_moe.py: its arguments and tables. Its runs are not in the suite (CI time): the
policy calls it times are the ones tests/distributed/test_routing_replay.py checks; run
`python tools/bench_moe.py --eps 2 --batches text --repeats 1 --no-sync` (~60 s) after changing it."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_moe", ROOT / "tools" / "bench_moe.py")
bench = sys.modules["bench_moe"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(bench)


@pytest.mark.parametrize("argv", [["--repeats", "0"], ["--eps", "1,4"], ["--engine-tps", "3"],
                                  ["--batches", "text,video"]])
def test_arguments_outside_the_two_rank_cases_are_refused(argv):
    with pytest.raises(ValueError, match=argv[0]):
        bench.parse_args(argv)


def test_learner_table_names_each_row_and_its_extra_cost():
    rows = [{"ep": 2, "batch": "text", "tokens": 424, "replay": r.name, "mini_batches": r.mini_batches,
                 "includes": r.includes, "median_s": s, "best_s": s, "extra_pct": x, "extra_best_pct": x,
                 "agree": a}
            for r, s, x, a in zip(bench.ROWS, (1.0, 1.25, 2.0, 2.1), (None, 25.0, None, 5.0),
                                  (None, 0.0312, None, 1.0))]
    lines = bench.learner_table(rows).splitlines()
    assert len(lines) == 2 + len(bench.ROWS)
    assert "step includes" in lines[0] and "extra" in lines[0]
    assert "rollout" in lines[3] and "+25.0%" in lines[3] and "0.031" in lines[3]
    assert "learner" in lines[5] and "+5.0%" in lines[5] and "1.000" in lines[5]
    assert len({len(line) for line in lines}) == 1  # aligned columns


def test_sync_table_gives_every_rank_and_the_max_and_mean():
    row = {"ep": 2, "engine_tp": 1, "received": [786432, 393216], "received_max": 786432,
               "received_mean": 589824.0, "engine": [3577472, 3577472], "pushed": [3577472, 3577472],
               "tensors": 180, "median_s": 0.2}
    line = bench.sync_table([row]).splitlines()[2]
    assert "786432 / 393216" in line and "589824" in line and "one per rank" in line
