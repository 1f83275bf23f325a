"""The benchmark report: one table in the paper's column order with the published numbers of the
same backbone beside this run's, the per-benchmark details, `summary.json` and a PNG chart."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from statistics import fmean
from typing import Any

from prco_mega.eval.benchmarks.published import (
    BACKBONE_BY_HIDDEN_SIZE,
    COLUMNS,
    SOURCE,
    reference_rows,
)
from prco_mega.eval.benchmarks.registry import BY_NAME
from prco_mega.eval.benchmarks.run import EvalReport
from prco_mega.eval.benchmarks.summary import BenchSummary
from prco_mega.eval.report import format_table

TABLE_COLUMNS = {"model": "model", **{n: BY_NAME[n].title for n in COLUMNS}, "avg": "Avg."}


def backbone_of(model_dir: Path) -> str | None:
    """"3b" / "7b" from the checkpoint's text hidden size, None for other models."""
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text())
    hidden = config.get("text_config", {}).get("hidden_size") or config.get("hidden_size")
    return BACKBONE_BY_HIDDEN_SIZE.get(hidden)


def run_row(label: str, summaries: Mapping[str, BenchSummary]) -> dict[str, Any]:
    """This run's table row; the average is over the benchmarks that ran (named when not 8)."""
    scores = {n: summaries[n].score for n in COLUMNS if n in summaries}
    present = [s for s in scores.values() if s is not None]
    row: dict[str, Any] = {"model": label, **scores, "avg": fmean(present) if present else None}
    if len(present) < len(COLUMNS):
        row["model"] = f"{label} (avg of {len(present)}/{len(COLUMNS)})"
    return row


def results_table(label: str, summaries: Mapping[str, BenchSummary],
                  backbone: str | None) -> str:
    rows = [run_row(label, summaries), *reference_rows(backbone)]
    text = format_table(rows, TABLE_COLUMNS, precision=2)
    if backbone:
        text += f"\n(paper rows: Qwen2.5-VL-{backbone.upper()}; source: {SOURCE})"
    return text


def details_table(summaries: Mapping[str, BenchSummary]) -> str:
    """Per benchmark: items, headline number and what it is, plain accuracy, and the project's
    verifier beside it when it was asked for (`--also-verifier`)."""
    rows = [{"benchmark": BY_NAME[n].title, "items": s.items, "score": s.score,
             "accuracy": s.accuracy, "verifier": s.verifier_accuracy, "score is": s.metric}
            for n, s in summaries.items()]
    columns = ["benchmark", "items", "score", "accuracy", "verifier", "score is"]
    if all(s.verifier_accuracy is None for s in summaries.values()):
        columns.remove("verifier")
    return format_table(rows, columns, 2)


def _groups_table(groups: Mapping[str, tuple[int, float]]) -> str:
    rows = [{"group": g, "items": n, "accuracy": acc} for g, (n, acc) in groups.items()]
    return format_table(rows, ["group", "items", "accuracy"], 2)


def breakdowns(summaries: Mapping[str, BenchSummary]) -> str:
    """Each benchmark's groups (MathVerse: problem versions; MMStar: categories, then l2
    categories) and extras (WeMath S1-S3 and dimensions, DynaMath average and worst case)."""
    parts = []
    for name, s in summaries.items():
        lines = [f"{BY_NAME[name].title}:", _groups_table(s.groups)]
        for key, groups in s.more_groups.items():
            lines += [f"{BY_NAME[name].title} by {key}:", _groups_table(groups)]
        if s.extra:
            lines.append("  " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in s.extra.items()))
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def plot_results(label: str, summaries: Mapping[str, BenchSummary], backbone: str | None,
                 png_path: Path) -> Path:
    """Grouped bars per benchmark (and the average): this run beside the published rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [run_row(label, summaries), *reference_rows(backbone)]
    keys = [*COLUMNS, "avg"]
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(13, 4.5), constrained_layout=True)
    for i, row in enumerate(rows):
        values = [row.get(k) if row.get(k) is not None else 0.0 for k in keys]
        ax.bar([x + i * width for x in range(len(keys))], values, width, label=row["model"])
    ax.set_xticks([x + width * (len(rows) - 1) / 2 for x in range(len(keys))],
                  [TABLE_COLUMNS[k] for k in keys])
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{label}: eight benchmarks" + (f" vs paper ({backbone.upper()})"
                                                 if backbone else ""))
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


def write_report(out_dir: Path, label: str, report: EvalReport, backbone: str | None,
                 settings: Any) -> dict[str, Path]:
    """`results.txt` (table, details, breakdowns), `summary.json` and `chart.png` in `out_dir`;
    returns their paths."""
    s = report.summaries
    text = "\n\n".join([results_table(label, s, backbone), details_table(s), breakdowns(s)])
    if report.missing:
        text += "\n\nnot run (no folder): " + ", ".join(BY_NAME[n].title for n in report.missing)
    for name, problem in report.problems.items():
        text += f"\nnot run ({BY_NAME[name].title}): {problem}"
    skipped = {n: dict(r.skipped) for n, r in report.runs.items() if r.skipped}
    if skipped:
        text += f"\nskipped rows: {skipped}"
    paths = {"table": out_dir / "results.txt", "summary": out_dir / "summary.json",
             "chart": out_dir / "chart.png"}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths["table"].write_text(text + "\n")
    summary = {"model": label, "backbone": backbone, "settings": dataclasses.asdict(settings),
               "benchmarks": {n: dataclasses.asdict(v) for n, v in s.items()},
               "average": run_row(label, s)["avg"], "missing": report.missing,
               "problems": report.problems,
               "skipped": skipped, "reference": reference_rows(backbone), "source": SOURCE}
    paths["summary"].write_text(json.dumps(summary, indent=2) + "\n")
    plot_results(label, s, backbone, paths["chart"])
    return paths

