"""The paper's published numbers (arXiv 2603.28618, PRCO), as data with their source.

Per-benchmark numbers come from the authors' repository README (github.com/Dtc7w3PQ/PRCO,
commit 69d094b): the 7B table is shown there; the 3B table sits in the same README inside an
HTML comment. Their averages equal the paper's (7B 42.45 / 47.41 / 49.63, 3B 34.88 / 41.23 /
42.53), which `tests/test_bench_report.py` checks. The authors scored with VLMEvalKit and a GPT
judge; which sub-metric a column is, where the README does not say, is inferred: DynaMath's
magnitude (20.35 for the 7B base model) is VLMEvalKit's worst-case accuracy, WeMath's its Score
(Strict). Their config evaluates both MathVerse testmini and its Vision-Only subset; which one
the column reports is not stated.
"""
from __future__ import annotations

from statistics import fmean

COLUMNS = ("mathverse", "mathvision", "mathvista", "wemath", "dynamath", "logicvista",
           "mmmu_pro_v", "mmstar")
"""The paper's column order (benchmark names of `benchmarks.BENCHMARKS`)."""

SOURCE = ("PRCO authors' README, github.com/Dtc7w3PQ/PRCO @ 69d094b (7B table shown, 3B table in "
          "an HTML comment); averages as in arXiv 2603.28618")

PUBLISHED: dict[str, dict[str, tuple[float, ...]]] = {
    "7b": {
        "Qwen2.5-VL-7B": (43.02, 25.46, 70.20, 35.43, 20.35, 45.41, 35.49, 64.26),
        "DAPO-7B": (48.73, 29.30, 74.80, 45.62, 26.14, 47.87, 41.38, 65.40),
        "PRCO-7B": (49.49, 30.86, 77.10, 50.29, 29.74, 49.66, 42.08, 67.80),
    },
    "3b": {
        "Qwen2.5-VL-3B": (34.13, 22.50, 65.00, 23.52, 12.37, 38.70, 26.76, 56.06),
        "DAPO-3B": (40.98, 27.40, 70.20, 35.14, 20.35, 43.62, 31.73, 60.40),
        "PRCO-3B": (42.51, 27.27, 70.30, 40.00, 22.36, 44.97, 31.85, 61.00),
    },
}
"""backbone -> model -> scores in `COLUMNS` order (percent)."""

PAPER_AVERAGES = {"7b": (42.45, 47.41, 49.63), "3b": (34.88, 41.23, 42.53)}
"""The averages the paper states (base, DAPO, PRCO)."""

BACKBONE_BY_HIDDEN_SIZE = {2048: "3b", 3584: "7b"}
"""Qwen2.5-VL text hidden sizes of the two published backbones."""


def reference_rows(backbone: str | None) -> list[dict[str, float | str]]:
    """Table rows {"model", benchmark: score, ..., "avg"} of the backbone's published models
    (none for None or a backbone the paper did not train)."""
    rows = []
    for model, scores in PUBLISHED.get(backbone or "", {}).items():
        row: dict[str, float | str] = {"model": f"{model} (paper)"}
        row.update(zip(COLUMNS, scores))
        row["avg"] = fmean(scores)
        rows.append(row)
    return rows
