"""Run reporting: the metrics file survives kills and resumes like an uninterrupted run, tables
line up, the per-step line shows what a user watches, and the curves PNG is a real image."""
from __future__ import annotations

import json
import math

import pytest

from prco_mega.eval.report import comparison_table, format_table
from prco_mega.tracking.metrics import (MetricsLogger, plot_metrics, read_metrics, running_mean,
                                        step_line)
from prco_mega.eval.synthetic import EvalRecord, EvalResult


def fake_metrics(step: int) -> dict[str, float]:
    """Deterministic per-step metrics with the training loop's keys (a noisy upward trend)."""
    wobble = math.sin(1.7 * step)
    return {
        "step": step,
        "observer/reward": 0.2 + 0.01 * step + 0.05 * wobble,
        "solver/reward": 0.4 + 0.01 * step + 0.05 * wobble,
        "solver/accuracy": min(1.0, 0.3 + 0.012 * step + 0.04 * wobble),
        "observer/perception_acc": min(1.0, 0.5 + 0.008 * step - 0.03 * wobble),
        "observer/leak_rate": max(0.0, 0.1 - 0.002 * step + 0.02 * wobble),
        "observer/caption_len": 40 + 0.5 * step,
        "solver/response_len": 80 - 0.3 * step,
        "mismatch/mean_abs": 2e-6 * (1 + 0.5 * wobble),
        "mismatch/kl_k3": 3e-12 * (1.2 + wobble),
        "time/rollout": 4.0, "time/score": 0.05, "time/learn": 6.25, "time/sync": 0.2,
    }


def run_steps(logger: MetricsLogger, start: int, stop: int) -> None:
    for step in range(start, stop):
        logger.log(fake_metrics(step))


# ---------------------------------------------------------------- metrics file


def test_logger_appends_one_json_line_per_step(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    run_steps(MetricsLogger(path), 0, 3)
    lines = path.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1, 2]
    assert json.loads(lines[1]) == fake_metrics(1)


def test_resumed_run_file_equals_uninterrupted_run(tmp_path):
    """A run killed after logging step 6, resumed from a checkpoint taken after step 4, rewrites
    steps 5.. and ends with exactly the bytes of a run that was never interrupted."""
    straight = tmp_path / "straight.jsonl"
    run_steps(MetricsLogger(straight), 0, 10)

    resumed = tmp_path / "resumed.jsonl"
    run_steps(MetricsLogger(resumed), 0, 7)
    with open(resumed, "a") as f:
        f.write('{"step": 7, "solver/accur')  # SIGKILL in the middle of a write
    logger = MetricsLogger(resumed)  # the new process
    assert logger.truncate_after(4) == 5
    run_steps(logger, 5, 10)
    assert resumed.read_bytes() == straight.read_bytes()


def test_truncate_drops_torn_line_and_later_steps_only(tmp_path):
    path = tmp_path / "metrics.jsonl"
    logger = MetricsLogger(path)
    run_steps(logger, 0, 4)
    with open(path, "a") as f:
        f.write("{not json")
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2, 3]
    logger.truncate_after(1)
    assert [r["step"] for r in read_metrics(path)] == [0, 1]
    logger.reset()
    assert read_metrics(path) == [] and path.read_text() == ""


def test_logger_refuses_metrics_without_step(tmp_path):
    logger = MetricsLogger(tmp_path / "m.jsonl")
    with pytest.raises(ValueError, match="step"):
        logger.log({"solver/accuracy": 0.5})
    logger.log({"solver/accuracy": 0.5}, step=3)
    assert read_metrics(logger.path) == [{"solver/accuracy": 0.5, "step": 3}]


# ---------------------------------------------------------------- step line and tables


def test_step_line_shows_roles_accuracy_leak_lengths_mismatch_and_time():
    line = step_line(3, fake_metrics(3))
    assert line.startswith("step 3 | ")
    for expected in ("reward O 0.", "acc S 0.", "percep O 0.", "leak O 0.", "len O 41.5 S 79.1",
                     "mismatch |d| ", "sec rollout 4 score 0.05 learn 6.25 sync 0.2 (10.5)"):
        assert expected in line, (expected, line)
    assert "\n" not in line


def test_step_line_leaves_out_roles_a_baseline_does_not_have():
    line = step_line(0, {"solver/reward": 0.5, "solver/accuracy": 0.25, "solver/response_len": 12})
    assert line == "step 0 | reward S 0.5 | acc S 0.25 | len S 12"


def test_step_line_shows_the_kl_to_the_reference_per_role_when_there_is_one():
    line = step_line(1, {"solver/accuracy": 0.5, "observer/kl": 0.0125, "solver/kl": 0.0004})
    assert line == "step 1 | acc S 0.5 | kl-ref O 0.0125 S 4.0e-04"


def test_format_table_aligns_columns_and_marks_missing_values():
    rows = [{"algo": "prco", "acc": 0.4567, "n": 64},
            {"algo": "grpo-baseline", "acc": None, "n": 8}]
    lines = format_table(rows, {"algo": "algorithm", "acc": "accuracy", "n": "tasks"}).splitlines()
    assert lines[0].split() == ["algorithm", "accuracy", "tasks"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["prco", "0.457", "64"]
    assert lines[3].split() == ["grpo-baseline", "n/a", "8"]
    # text left-aligned, numbers right-aligned: every row's columns end at the same place
    assert len({len(line) for line in lines}) == 1
    assert lines[2].startswith("prco ") and lines[3].endswith(" 8")


def _record(family: str, correct: float, perception: float) -> EvalRecord:
    return EvalRecord(uid=f"t-{family}", family=family, answer="3", caption="- a",
                      caption_tokens=10, perception=perception, leak=0, caption_format_ok=True,
                      response="x", response_tokens=20, correct=correct, format=1.0,
                      truncated=False)


def test_comparison_table_reports_accuracy_and_perception_change():
    before = EvalResult("prco", [_record("bars", 0.0, 0.5), _record("shapes", 1.0, 0.0)])
    after = EvalResult("prco", [_record("bars", 1.0, 1.0), _record("shapes", 1.0, 0.5)])
    text = comparison_table(before, json.loads(json.dumps(after.summary())))  # dicts work too
    rows = {line.split("  ")[0]: line.split() for line in text.splitlines()}
    # (0 + 1) / 2 -> (1 + 1) / 2 and (0.5 + 0) / 2 -> (1 + 0.5) / 2
    assert rows["Solver accuracy (with image)"][-4:] == ["50.0%", "100.0%", "+50.0", "pt"]
    assert rows["Caption perception accuracy"][-4:] == ["25.0%", "75.0%", "+50.0", "pt"]
    assert "bars" in rows and rows["bars"][1:] == ["1", "0.0%", "100.0%", "50.0%", "100.0%"]


# ---------------------------------------------------------------- curves


def test_running_mean_is_trailing_window_mean():
    assert running_mean([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert running_mean([2.0, 4.0], 1) == [2.0, 4.0]


def test_plot_writes_a_png_with_every_panel(tmp_path):
    from PIL import Image

    path = tmp_path / "metrics.jsonl"
    run_steps(MetricsLogger(path), 0, 40)
    png = plot_metrics(path, tmp_path / "plots" / "curves.png")
    with Image.open(png) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width >= 1000 and height >= 600
        # not a blank canvas: curves and text put many distinct colours on it
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 50


def test_plot_of_a_single_role_baseline_without_observer_metrics(tmp_path):
    from PIL import Image

    path = tmp_path / "metrics.jsonl"
    logger = MetricsLogger(path)
    for step in range(3):
        logger.log({"step": step, "solver/reward": 0.1 * step, "solver/accuracy": 0.2})
    with Image.open(plot_metrics(path, tmp_path / "curves.png")) as image:
        assert image.size[0] > 0


def test_reward_by_perception_groups_captions_by_perception():
    from prco_mega.eval.synthetic import reward_by_perception

    rows = reward_by_perception([(0.0, 0.25), (1.0, 1.0), (0.0, 0.0), (0.5, 0.0), (1.0, 0.5)])
    assert [r["perception"] for r in rows] == [0.0, 0.5, 1.0]
    assert [r["captions"] for r in rows] == [2, 1, 2]
    assert [r["share"] for r in rows] == [0.4, 0.2, 0.4]
    assert [r["reward"] for r in rows] == [0.125, 0.0, 0.75]


def _read(readings, sampled=None, family="polygons") -> EvalRecord:
    record = _record(family, 1.0, 1.0)
    record.readings, record.sampled_hits = readings, sampled
    return record


def test_perception_by_value_counts_greedy_readings_and_sampled_shares():
    from prco_mega.eval.synthetic import perception_by_value

    records = [_read([("5", "6"), ("3", "3")], [("5", 0.25), ("3", 1.0)]),
               _read([("5", "5"), ("4", None)], [("5", 0.75), ("4", 0.0)]),
               _read([("5", "6"), ("4", "6")], [("5", 0.5), ("4", 0.5)])]
    table = perception_by_value(records)["polygons"]
    assert list(table) == ["3", "4", "5"]  # by value
    assert table["5"] == {"facts": 3, "greedy": 1 / 3, "sampled": 0.5, "misreads": {"6": 2}}
    assert table["4"]["misreads"] == {"none": 1, "6": 1} and table["4"]["greedy"] == 0.0
    # without sampled captions the sampled share is unknown, not 0
    assert perception_by_value([_read([("3", "3")])])["polygons"]["3"]["sampled"] is None


def test_families_with_many_values_get_no_per_value_table():
    from prco_mega.eval.synthetic import MAX_VALUES_PER_FAMILY, perception_by_value

    many = [_read([(str(v), str(v))], family="bars") for v in range(MAX_VALUES_PER_FAMILY + 1)]
    few = [_read([("3", "4")])]
    assert set(perception_by_value(many + few)) == {"polygons"}


def test_comparison_table_shows_perception_per_true_value_with_misreadings():
    before = EvalResult("prco", [_read([("5", "6"), ("4", "6")]), _read([("5", "6"), ("4", "4")])])
    after = EvalResult("prco", [_read([("5", "6"), ("4", "4")]), _read([("5", "5"), ("4", "4")])])
    text = comparison_table(before, json.loads(json.dumps(after.summary())))
    rows = {line.split("  ")[0].strip(): line for line in text.splitlines()}
    assert "0.0%" in rows["polygons 5 (pentagon)"] and "hexagon 2" in rows["polygons 5 (pentagon)"]
    four = rows["polygons 4 (square)"].split()
    assert four[3:7] == ["2", "50.0%", "100.0%", "hexagon"]
