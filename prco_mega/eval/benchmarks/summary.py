"""Each benchmark's aggregate, as the paper's table reports it, from its prediction records.

Accuracy with a per-`group` breakdown (a record may count in several groups: LogicVista's
skills); MathVerse per problem version; MMStar per category and per l2 category; WeMath's S1, S2,
S3 and four-dimensional Score over the official denominators; DynaMath's worst case over each
seed's variants beside the average. With `--also-verifier` the project's verifier is a second
accuracy column (`verifier_accuracy`), never the headline.
"""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

WEMATH_PROBLEMS = 525
"""WeMath testmini's multi-step problems (360 two-step, 165 three-step): the fixed denominator of
its official Score (VLMEvalKit vlmeval/dataset/utils/wemath.py, total_count=525)."""


@dataclass
class BenchSummary:
    """One benchmark's numbers, in percent."""

    benchmark: str
    items: int
    score: float | None
    """The headline number (the paper's column); None without items."""
    accuracy: float | None
    """Plain accuracy over all items."""
    metric: str
    groups: dict[str, tuple[int, float]] = field(default_factory=dict)
    """Breakdown key -> (items, accuracy %)."""
    extra: dict[str, float | int | None] = field(default_factory=dict)
    """Benchmark-specific numbers (WeMath S1-S3 and dimensions, DynaMath average/worst case)."""
    more_groups: dict[str, dict[str, tuple[int, float]]] = field(default_factory=dict)
    """Further breakdowns by name (MMStar's `l2` categories)."""
    verifier_accuracy: float | None = None
    """The project's verifier as a second column (None unless --also-verifier)."""


def _pct(values: Sequence[float]) -> float | None:
    return 100.0 * fmean(values) if values else None


def by_group(records: Sequence[Mapping[str, Any]], key: str = "group"
             ) -> dict[str, tuple[int, float]]:
    """(items, accuracy %) per value of `key`; a list value counts the record in each."""
    groups: dict[str, list[float]] = defaultdict(list)
    for r in records:
        value = r.get(key) or "unknown"
        for g in (value if isinstance(value, list) else [value]):
            groups[str(g)].append(float(r["correct"]))
    return {g: (len(v), 100.0 * fmean(v)) for g, v in sorted(groups.items())}


def _wemath_problems(records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int], dict]:
    """(problem ID, steps) -> {"1": right, ..., "multi": right} of the multi-step problems."""
    problems: dict[tuple[str, int], dict[str, bool]] = defaultdict(dict)
    for r in records:
        m = re.fullmatch(r"(\d+)steps?_(\w+)", str(r.get("wemath_key") or ""))
        if m and int(m[1]) > 1:
            problems[(str(r["wemath_id"]), int(m[1]))][m[2]] = bool(r["correct"])
    return problems


def wemath_dimensions(records: Sequence[Mapping[str, Any]],
                      denominator: int = WEMATH_PROBLEMS) -> dict[str, float | int | None]:
    """WeMath's official metrics (VLMEvalKit vlmeval/dataset/utils/wemath.py, from the authors'
    four_dimensional_metrics.py and accuracy.py) over its multi-step problems (rows sharing
    `ID`, keys `Nsteps_1..N` and `Nsteps_multi`; problems missing a row count in no dimension).

    Per problem, with s = every sub-problem right, a = any right, m = the multi-step right:
    IK = not s and not m; IG = s and not m; CM strict = s and m, CM loose = a and m; RM strict
    = m and not s, RM loose = m and not a. Score = (525 - 0.5 IG - RM - IK) / 525, with the
    official fixed denominator (so a partial run scores high: `problems` says how many were
    seen). S1 = accuracy over the sub-problems, S2 / S3 = accuracy of the multi-step question
    over the two- / three-step problems.
    """
    counts = dict.fromkeys(("IK", "IG", "CM_strict", "CM_loose", "RM_strict", "RM_loose"), 0)
    subs_right: list[float] = []
    multi_right: dict[int, list[float]] = {2: [], 3: []}
    for (_, steps), parts in _wemath_problems(records).items():
        subs = [parts.get(str(i)) for i in range(1, steps + 1)]
        subs_right += [float(s) for s in subs if s is not None]
        if "multi" in parts:
            multi_right.setdefault(steps, []).append(float(parts["multi"]))
        if "multi" not in parts or None in subs:
            continue
        every, some, multi = all(subs), any(subs), parts["multi"]
        counts[("CM_strict" if every else "RM_strict") if multi else ("IG" if every else "IK")] += 1
        if multi:
            counts["CM_loose" if some else "RM_loose"] += 1
    problems = sum(len(v) for v in multi_right.values())
    out: dict[str, float | int | None] = {"problems": problems, **counts,
                                          "S1": _pct(subs_right), "S2": _pct(multi_right[2]),
                                          "S3": _pct(multi_right[3])}
    for kind in ("strict", "loose"):
        lost = 0.5 * counts["IG"] + counts[f"RM_{kind}"] + counts["IK"]
        out[f"score_{kind}"] = 100.0 * (denominator - lost) / denominator if problems else None
    return out


def dynamath_cases(records: Sequence[Mapping[str, Any]]) -> dict[str, float | int | None]:
    """Average accuracy over all variants, and worst-case accuracy over seed questions (a seed is
    right only when every variant of it is)."""
    seeds: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        seeds[str(r.get("seed"))].append(bool(r["correct"]))
    return {"seeds": len(seeds), "average": _pct([float(r["correct"]) for r in records]),
            "worst_case": _pct([float(all(v)) for v in seeds.values()])}


def summarise(benchmark: str, metric: str,
              records: Sequence[Mapping[str, Any]]) -> BenchSummary:
    """The benchmark's headline score, accuracy, breakdowns and extras from its records."""
    accuracy = _pct([float(r["correct"]) for r in records])
    summary = BenchSummary(benchmark, len(records), accuracy, accuracy, metric, by_group(records))
    if records and all("verifier_correct" in r for r in records):
        summary.verifier_accuracy = _pct([float(r["verifier_correct"]) for r in records])
    if benchmark == "mathverse":
        summary.metric = f"accuracy over {len(summary.groups)} problem version(s): " + ", ".join(
            summary.groups)
    elif benchmark == "mmstar":
        summary.more_groups["l2"] = by_group(records, "l2")
    elif benchmark == "wemath":
        summary.extra = wemath_dimensions(records)
        if summary.extra["score_strict"] is not None:
            summary.score = summary.extra["score_strict"]
        else:
            summary.metric = "accuracy (no multi-step problem for Score (Strict))"
    elif benchmark == "dynamath":
        summary.extra = dynamath_cases(records)
        summary.score = summary.extra["worst_case"]
    return summary
