"""`prco-mega eval` end to end on the real vLLM engine with the tiny random Qwen2.5-VL: all eight
benchmarks from fixture files in both layouts (real PNG images), Observer -> Solver with the
image, a run killed mid-benchmark and rerun, the table, the JSONL and the chart. The model's text
is gibberish: these tests check the pipeline and its bookkeeping, and that every score is the
score of the text recorded."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared fixture files
from bench_data import MIXED, NAMES, write_root  # noqa: E402

from prco_mega.eval.benchmarks.discovery import check, find, load  # noqa: E402
from prco_mega.eval.benchmarks.registry import BY_NAME, select  # noqa: E402
from prco_mega.eval.benchmarks.report import write_report  # noqa: E402
from prco_mega.eval.benchmarks.run import EvalSettings, run_eval  # noqa: E402
from prco_mega.eval.benchmarks.scoring import extract_answer, item_correct  # noqa: E402
from prco_mega.eval.benchmarks.summary import summarise  # noqa: E402
from prco_mega.eval.synthetic import greedy  # noqa: E402
from prco_mega.rollout.two_stage import (engine_eos, request_of,  # noqa: E402
                                          solver_caption)

pytestmark = pytest.mark.vllm

SETTINGS = EvalSettings(observer_max_tokens=6, solver_max_tokens=6, chunk_size=3,
                        also_verifier=True)
KILLED_IN, KILLED_AFTER = "wemath", 3
"""The first run dies after WeMath's first chunk (3 of its 4 items), three benchmarks done."""


class Killed(Exception):
    pass


def _kill(benchmark, written):
    if benchmark == KILLED_IN and written >= KILLED_AFTER:
        raise Killed


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_root(tmp_path_factory.mktemp("bench") / "data", MIXED)


@pytest.fixture(scope="module")
def resumed(engine, prompts, root, tmp_path_factory):
    """(out dir, JSONL bytes when killed, report of the rerun)."""
    out = tmp_path_factory.mktemp("resumed")
    with pytest.raises(Killed):
        run_eval(engine, check(root, select("all")), out, SETTINGS, prompts, on_chunk=_kill,
                 echo=lambda line: None)
    before = {p.stem: p.read_bytes() for p in (out / "predictions").glob("*.jsonl")}
    return out, before, run_eval(engine, check(root, select("all")), out, SETTINGS, prompts)


def _items(root, name):
    return load(find(root, BY_NAME[name])).items


def test_a_run_killed_mid_benchmark_reruns_without_redoing_any_item(resumed, root):
    out, before, report = resumed
    assert sorted(before) == sorted(NAMES[:NAMES.index(KILLED_IN) + 1])
    assert len(before[KILLED_IN].splitlines()) == KILLED_AFTER
    for name in NAMES:
        uids = [i.task.uid for i in _items(root, name)]
        run = report.runs[name]
        done_before = len(before.get(name, b"").splitlines())
        assert (run.resumed, run.generated) == (done_before, len(uids) - done_before), name
        path = out / "predictions" / f"{name}.jsonl"
        assert path.read_bytes().startswith(before.get(name, b""))
        assert [r["uid"] for r in _lines(path)] == uids  # each item exactly once, in order


def test_every_record_is_scored_from_the_text_it_shows(resumed):
    out, _, report = resumed
    for name in NAMES:
        records = _lines(out / "predictions" / f"{name}.jsonl")
        for r in records:
            assert r["mode"] == "prco" and r["benchmark"] == name
            # the random model may end an answer at once (a placeholder token is dropped)
            assert 1 <= r["caption_tokens"] <= 6 and 0 <= r["response_tokens"] <= 6
            assert r["extracted"] == extract_answer(name, r["response"], r)
            assert r["correct"] == item_correct(name, r["extracted"], r["answer"], r,
                                                r["response"])
            assert isinstance(r["verifier_correct"], bool)
        assert report.summaries[name] == summarise(name, BY_NAME[name].metric, records)


def test_the_resumed_records_are_what_one_uninterrupted_greedy_pass_gives(engine, prompts,
                                                                          root, resumed):
    """Greedy is repeatable, so one pass over all 27 items in a single call per stage must
    give the killed-and-resumed run's captions and answers: Observer caption first, then the
    Solver prompt with that caption AND the image."""
    out, _, _ = resumed
    tasks, records = [], []
    for name in NAMES:
        tasks += [i.task_with_images() for i in _items(root, name)]
        records += _lines(out / "predictions" / f"{name}.jsonl")
    observer = engine.generate([request_of(prompts.observer(t)) for t in tasks], greedy(6))
    captions = [solver_caption(g[0].text, engine_eos(engine)) for g in observer]
    assert captions == [r["caption"] for r in records]
    solver = [prompts.solver(t, c, with_image=True) for t, c in zip(tasks, captions)]
    assert all(len(p.images) == 1 for p in solver)
    again = engine.generate([request_of(p) for p in solver], greedy(6))
    assert [g[0].text for g in again] == [r["response"] for r in records]


def test_direct_mode_answers_the_single_prompt(engine, prompts, root, tmp_path):
    settings = EvalSettings(mode="direct", solver_max_tokens=6, chunk_size=4, limit=2)
    report = run_eval(engine, check(root, select("mathvista,mmstar"), limit=2), tmp_path,
                      settings, prompts)
    for name in ("mathvista", "mmstar"):
        records = report.runs[name].records
        tasks = [i.task_with_images() for i in _items(root, name)[:2]]
        again = engine.generate([request_of(prompts.single(t)) for t in tasks], greedy(6))
        assert [r["caption"] for r in records] == [None, None]
        assert [r["response"] for r in records] == [g[0].text for g in again]


def test_missing_benchmarks_are_skipped_with_a_message(engine, prompts, root, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "LMUData").mkdir()  # MMStar as VLMEvalKit's flat folder holds it, no MathVerse
    (partial / "LMUData" / "MMStar.tsv").symlink_to(root / "LMUData" / "MMStar.tsv")
    lines: list[str] = []
    settings = EvalSettings(observer_max_tokens=2, solver_max_tokens=2, limit=1)
    loaded = check(partial, select("mathverse,mmstar"), limit=1)
    report = run_eval(engine, loaded, tmp_path / "out", settings, prompts, echo=lines.append)
    assert report.missing == ["mathverse"] and list(report.summaries) == ["mmstar"]
    assert "MathVerse: no folder" in lines[0] and "skipped" in lines[0]


def test_table_jsonl_and_chart_are_written(resumed):
    out, _, report = resumed
    paths = write_report(out, "tiny (prco)", report, "7b", SETTINGS)
    table = paths["table"].read_text()
    header = table.splitlines()[0].split()
    assert header == ["model", "MathVerse", "MathVision", "MathVista", "WeMath", "DynaMath",
                      "LogicVista", "MMMU-Pro", "MMStar", "Avg."]
    assert table.splitlines()[2].startswith("tiny (prco) ") and "PRCO-7B (paper)" in table
    assert "Text Dominant" in table and "score_strict" in table and "worst_case" in table
    summary = json.loads(paths["summary"].read_text())
    assert set(summary["benchmarks"]) == set(NAMES)
    assert summary["benchmarks"]["wemath"]["extra"]["problems"] == 1
    assert summary["benchmarks"]["dynamath"]["extra"]["seeds"] == 2
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum(1 for _ in (out / "predictions").glob("*.jsonl")) == len(NAMES)
