"""Resume bookkeeping of the benchmark runner (a stand-in engine answers; the real engine runs in
tests/vllm/test_bench_eval.py): a run killed after a chunk, even mid-line, reruns only the items
it had not written, and each stage of a chunk is one engine call."""
from __future__ import annotations

import json

import pytest
from bench_data import write_root

from prco_mega.eval.benchmarks.discovery import find, load
from prco_mega.eval.benchmarks.registry import BY_NAME
from prco_mega.eval.benchmarks.run import (
    EvalSettings,
    PredictionLog,
    merge_predictions,
    run_benchmark,
)
from prco_mega.roles.prompts import PromptSet
from prco_mega.rollout.engine import Generation, RolloutEngine


class CannedEngine(RolloutEngine):
    """Answers every prompt with `\\boxed{B}` and remembers each call's prompts."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def generate(self, requests, sampling):
        assert sampling.temperature == 0.0 and sampling.n == 1  # greedy
        self.calls.append([r.prompt for r in requests])
        return [[Generation([5, 6], "- a fact\n\\boxed{B}", None, "stop")] for _ in requests]

    def update_weights(self, named_tensors, **kwargs):
        raise NotImplementedError

    def weight_groups(self):
        return {}

    def reset_caches(self, zero_kv=False):
        pass


class Killed(Exception):
    pass


@pytest.fixture()
def items(tmp_path):
    root = write_root(tmp_path / "data", "hub")
    return load(find(root, BY_NAME["dynamath"])).items


def _kill_after(n_items):
    def hook(benchmark, written):
        if written >= n_items:
            raise Killed(f"{benchmark} at {written}")
    return hook


def test_a_killed_run_reruns_only_what_it_had_not_written(tmp_path, items):
    log = PredictionLog(tmp_path / "out" / "dynamath.jsonl")
    settings = EvalSettings(chunk_size=2, observer_max_tokens=4, solver_max_tokens=4)
    engine = CannedEngine()
    with pytest.raises(Killed):
        run_benchmark(engine, PromptSet(), "dynamath", items, log, settings, _kill_after(2))
    assert len(engine.calls) == 2 and all(len(c) == 2 for c in engine.calls)  # one per stage
    first = log.path.read_bytes()
    assert len(first.splitlines()) == 2
    with open(log.path, "ab") as f:  # the kill also tore a third line half-way
        f.write(b'{"uid": "1-v2", "benchmark": "dyna')

    engine = CannedEngine()
    run = run_benchmark(engine, PromptSet(), "dynamath", items, log, settings)
    assert (run.resumed, run.generated) == (2, 2)
    asked = [p for call in engine.calls for p in call]
    assert len(asked) == 4 and all(items[2].task.question in p or items[3].task.question in p
                                   for p in asked)
    final = log.path.read_bytes()
    assert final.startswith(first)  # finished lines are never rewritten
    uids = [json.loads(line)["uid"] for line in final.splitlines()]
    assert uids == [i.task.uid for i in items]
    assert [r["uid"] for r in run.records] == uids
    assert all(r["extracted"] == "B" and r["caption"] == "- a fact\n\\boxed{B}"
               for r in run.records)

    engine = CannedEngine()
    again = run_benchmark(engine, PromptSet(), "dynamath", items, log, settings)
    assert (again.resumed, again.generated, engine.calls) == (4, 0, [])
    assert again.records == run.records


def test_direct_mode_is_one_call_and_modes_do_not_mix(tmp_path, items):
    log = PredictionLog(tmp_path / "direct.jsonl")
    engine = CannedEngine()
    run = run_benchmark(engine, PromptSet(), "dynamath", items, log,
                        EvalSettings(mode="direct", chunk_size=8))
    assert len(engine.calls) == 1 and run.generated == 4
    assert all(r["caption"] is None and r["mode"] == "direct" for r in run.records)
    with pytest.raises(ValueError, match="another mode"):
        run_benchmark(engine, PromptSet(), "dynamath", items, log, EvalSettings(mode="prco"))


def test_settings_are_checked():
    with pytest.raises(ValueError, match="mode"):
        EvalSettings(mode="both")
    with pytest.raises(ValueError, match="chunk_size"):
        EvalSettings(chunk_size=0)
    with pytest.raises(ValueError, match="limit"):
        EvalSettings(limit=0)
    with pytest.raises(ValueError, match="max_pixels"):
        EvalSettings(max_pixels=100)


def test_shard_files_fold_into_one_predictions_file_in_item_order(tmp_path):
    """What engines left (each its own shard file, one torn by a kill) merges into
    predictions/<name>.jsonl in item order; the shard files go; a rerun merges nothing new."""
    uids = ["a", "b", "c", "d", "e"]
    final = PredictionLog(tmp_path / "predictions" / "x.jsonl")
    final.append([{"uid": "b", "mode": "prco"}])
    shards = tmp_path / "predictions" / "shards"
    PredictionLog(shards / "x.engine-1-of-2.jsonl").append([{"uid": "d", "mode": "prco"},
                                                             {"uid": "c", "mode": "prco"}])
    PredictionLog(shards / "x.engine-0-of-2.jsonl").append([{"uid": "a", "mode": "prco"}])
    with open(shards / "x.engine-0-of-2.jsonl", "ab") as f:
        f.write(b'{"uid": "e", "mo')  # torn by the kill: not finished
    PredictionLog(shards / "y.engine-0-of-2.jsonl").append([{"uid": "z", "mode": "prco"}])
    merged = merge_predictions(tmp_path, "x", uids)
    assert list(merged) == ["a", "b", "c", "d"]
    assert [json.loads(line)["uid"] for line in final.path.read_text().splitlines()] == [
        "a", "b", "c", "d"]
    assert sorted(p.name for p in shards.iterdir()) == ["y.engine-0-of-2.jsonl"]
    before = final.path.read_bytes()
    assert list(merge_predictions(tmp_path, "x", uids)) == ["a", "b", "c", "d"]
    assert final.path.read_bytes() == before
