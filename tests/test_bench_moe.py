"""tools/bench_moe.py: its arguments and tables, and its fastest mode end to end (learner rows at
EP=2 on text, one repeat, no vLLM: one 2-rank torchrun launch, ~60 s here): R2 replays exactly
the routing its first pass recorded, R3 replays the carried (random) routing, which the routers'
own top-k mostly disagrees with."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
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


@pytest.mark.distributed
@pytest.mark.slow
def test_fastest_mode_times_every_learner_row(tmp_path):
    out = tmp_path / "result.json"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_moe.py"), "--eps", "2",
                           "--batches", "text", "--repeats", "1", "--no-sync", "--work",
                           str(tmp_path), "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    assert "learner step" in proc.stdout and "machine: " in proc.stdout
    rows = {r["replay"]: r for r in json.loads(out.read_text())["learner"]}
    assert set(rows) == {r.name for r in bench.ROWS}
    assert all(r["median_s"] > 0 and r["ep"] == 2 for r in rows.values())
    assert rows["learner"]["agree"] == 1.0  # the first pass's routing, replayed
    assert rows["rollout"]["agree"] < 0.5  # random carried routing: replay ran against it
    assert rows["none"]["agree"] is None and rows["none"]["extra_pct"] is None
