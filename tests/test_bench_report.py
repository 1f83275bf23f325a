"""The benchmark report (table in the paper's column order with the published rows, summary
JSON, PNG chart), the published numbers themselves, and the `prco-mega eval` user errors that
must be refused before an engine starts."""
from __future__ import annotations

import json
from collections import Counter
from statistics import fmean

import pytest
from bench_data import write_root

from prco_mega.cli import main
from prco_mega.eval.benchmarks.cli import EVAL_MAX_MODEL_LEN, engine_config
from prco_mega.eval.benchmarks.published import COLUMNS, PAPER_AVERAGES, PUBLISHED
from prco_mega.eval.benchmarks.report import (
    backbone_of,
    results_table,
    run_row,
    write_report,
)
from prco_mega.eval.benchmarks.run import BenchRun, EvalReport, EvalSettings
from prco_mega.eval.benchmarks.summary import BenchSummary

TITLES = ["MathVerse", "MathVision", "MathVista", "WeMath", "DynaMath", "LogicVista",
          "MMMU-Pro", "MMStar", "Avg."]


@pytest.mark.parametrize("backbone", ["3b", "7b"])
def test_published_rows_average_to_the_papers_averages(backbone):
    rows = PUBLISHED[backbone]
    assert all(len(scores) == len(COLUMNS) for scores in rows.values())
    averages = [fmean(scores) for scores in rows.values()]
    assert averages == pytest.approx(PAPER_AVERAGES[backbone], abs=0.005)


def _summaries(scores):
    return {n: BenchSummary(n, 10, s, s, "accuracy", {"all": (10, s)}) for n, s in scores.items()}


def test_table_is_in_the_papers_column_order_with_reference_rows():
    summaries = _summaries(dict(zip(COLUMNS, [40.0, 20, 60, 30, 10, 40, 30, 50])))
    text = results_table("mine", summaries, "7b")
    header = text.splitlines()[0]
    positions = [header.index(t) for t in TITLES]
    assert positions == sorted(positions)
    lines = text.splitlines()
    assert lines[2].startswith("mine") and "35.00" in lines[2]  # mean of the eight
    assert "Qwen2.5-VL-7B (paper)" in text and "49.63" in text and "Dtc7w3PQ/PRCO" in text
    assert "(paper)" not in results_table("mine", summaries, None)


def test_partial_runs_say_over_how_many_benchmarks_they_average():
    row = run_row("mine", _summaries({"mathvista": 70.0, "mmstar": 50.0}))
    assert row["avg"] == 60.0 and row["model"] == "mine (avg of 2/8)"


def test_report_files(tmp_path):
    summaries = _summaries({"mathverse": 40.0, "wemath": 30.0})
    report = EvalReport(summaries, ["mmstar"], {"mathverse": BenchRun([], 0, 10),
                                                "wemath": BenchRun([], 0, 10, Counter(x=1))},
                        {"dynamath": "no file of split 'sample'"})
    paths = write_report(tmp_path, "tiny (prco)", report, "3b", EvalSettings())
    text = paths["table"].read_text()
    assert "not run (no folder): MMStar" in text and "skipped rows: {'wemath': {'x': 1}}" in text
    assert "not run (DynaMath): no file of split 'sample'" in text
    summary = json.loads(paths["summary"].read_text())
    assert summary["average"] == 35.0 and summary["benchmarks"]["wemath"]["score"] == 30.0
    assert summary["settings"]["observer_max_tokens"] == 1024
    assert [r["model"] for r in summary["reference"]][0] == "Qwen2.5-VL-3B (paper)"
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_backbone_from_the_checkpoint_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"hidden_size": 3584}}))
    assert backbone_of(tmp_path) == "7b"
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 128}))
    assert backbone_of(tmp_path) is None


def test_engine_overrides_are_typed_and_checked():
    assert engine_config([]).max_model_len == EVAL_MAX_MODEL_LEN
    config = engine_config(["dtype=bfloat16", "engine.max_num_seqs=8"])
    assert (config.dtype, config.max_num_seqs) == ("bfloat16", 8)
    with pytest.raises(ValueError, match="unknown config key"):
        engine_config(["max_len=3"])


def test_cli_refuses_user_errors_before_starting_an_engine(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["eval", "--model", str(tmp_path / "model"), "--data-root"]
    assert main([*args, str(empty)]) == 2
    assert "no benchmark folder under" in capsys.readouterr().err
    root = write_root(tmp_path / "data", "tsv")
    assert main([*args, str(root), "--split", "mmstar=test"]) == 2
    assert "mmstar has splits ['val']" in capsys.readouterr().err
    assert main([*args, str(root)]) == 2
    assert "has no config.json" in capsys.readouterr().err
    assert main([*args, str(root), "--benchmarks", "mmbench"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err
    assert main([*args, str(root), "gpu_memory=0.9"]) == 2
    assert "unknown config key" in capsys.readouterr().err
