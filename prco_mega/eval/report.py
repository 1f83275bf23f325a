"""The run's final tables: the warm start vs trained comparison and plain-text tables."""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from prco_mega.data.captions import value_label, value_name

# ---------------------------------------------------------------- tables


def _cell(value: Any, precision: int) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{precision}f}"
    return str(value)


_NUMERIC = re.compile(r"^(n/a|nan|[+-]?(inf|\d[\d.,]*(e[+-]?\d+)?)(%| pt)?)$")
"""Cells right-aligned in tables: numbers, percentages, changes in points, n/a."""


def format_table(rows: Sequence[Mapping[str, Any]],
                 columns: Sequence[str] | Mapping[str, str], precision: int = 3) -> str:
    """Plain-text table. `columns`: keys (headers = keys) or {key: header}. Floats get
    `precision` decimals, None/missing shows as "n/a"; columns of numbers (also "12.5%",
    "+3.0 pt") are right-aligned, text left."""
    headers = dict(columns) if isinstance(columns, Mapping) else {c: c for c in columns}
    cells = [[_cell(row.get(key), precision) for key in headers] for row in rows]
    numeric = [all(_NUMERIC.match(r[i]) for r in cells) and any(r[i] != "n/a" for r in cells)
               for i in range(len(headers))]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers.values())]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(list(headers.values())), rule] + [line(c) for c in cells])


COMPARED: list[tuple[str, str, str]] = [
    ("solver/accuracy", "Solver accuracy (with image)", "pct"),
    ("observer/perception_acc", "Caption perception accuracy", "pct"),
    ("observer/perception_acc_sampled", "Caption perception, sampled captions", "pct"),
    ("observer/misread_kept_answer_rate", "Misreads that keep the answer", "pct"),
    ("observer/leak_rate", "Caption leak rate", "pct"),
    ("solver/format_rate", "Solver answers fully formatted", "pct"),
    ("observer/caption_len", "Caption length (tokens)", "len"),
    ("solver/response_len", "Solver answer length (tokens)", "len"),
]
"""Rows of the warm start vs trained table: (metric key, label, kind)."""


def _summary(result: Any) -> Mapping[str, Any]:
    """An `EvalResult`'s summary, or a summary dict as it is (e.g. read back from JSON)."""
    return result.summary() if hasattr(result, "summary") else result


def _show(value: float | None, kind: str) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}%" if kind == "pct" else f"{value:.1f}"


def _change(before: float | None, after: float | None, kind: str) -> str:
    if before is None or after is None:
        return "n/a"
    delta = after - before
    return f"{100 * delta:+.1f} pt" if kind == "pct" else f"{delta:+.1f}"


def comparison_table(before: Any, after: Any, per_family: bool = True,
                     labels: tuple[str, str] = ("warm start", "trained")) -> str:
    """Warm start vs trained on the same held-out tasks: Solver accuracy (with the image, as at
    test time) and caption perception accuracy first, then leakage, format and lengths; with
    `per_family`, accuracy and perception per task family below. Takes `EvalResult`s or their
    `summary()` dicts."""
    b, a = _summary(before), _summary(after)
    rows = [{"metric": label, labels[0]: _show(b.get(key), kind),
             labels[1]: _show(a.get(key), kind), "change": _change(b.get(key), a.get(key), kind)}
            for key, label, kind in COMPARED]
    text = format_table(rows, ["metric", labels[0], labels[1], "change"])
    if a.get("mode") == "single":
        text += ("\n(single-role policy: accuracy of the look-and-answer prompt; captions from "
                 "the Observer prompt of the same weights)")
    if per_family and b.get("per_family") and a.get("per_family"):
        text += "\n\n" + _family_table(b["per_family"], a["per_family"], labels)
    if per_family and b.get("perception_by_value") and a.get("perception_by_value"):
        text += "\n\n" + value_table(b["perception_by_value"], a["perception_by_value"], labels)
    return text


def _misread_cell(misreads: Mapping[str, int], family: str) -> str:
    """The commonest wrong readings, "hexagon 36, square 18"."""
    top = sorted(misreads.items(), key=lambda kv: -kv[1])[:2]
    return ", ".join(f"{value_name(family, v) or v} {n}" for v, n in top) or "-"


def value_table(before: Mapping[str, Any], after: Mapping[str, Any],
                labels: tuple[str, str] = ("warm start", "trained")) -> str:
    """Perception per true value of the needed facts (greedy caption, then sampled captions),
    with the two commonest greedy misreadings before and after: which values RL teaches the
    Observer to read, and which it reads as something else (`perception_by_value`)."""
    rows = []
    for family in sorted(set(before) & set(after)):
        for value in after[family]:
            vb, va = before[family].get(value, {}), after[family][value]
            rows.append({"true value": f"{family} {value_label(family, value)}",
                         "facts": va["facts"],
                         f"greedy {labels[0]}": _show(vb.get("greedy"), "pct"),
                         f"greedy {labels[1]}": _show(va.get("greedy"), "pct"),
                         f"misread as ({labels[0]})": _misread_cell(vb.get("misreads", {}), family),
                         f"misread as ({labels[1]})": _misread_cell(va.get("misreads", {}), family),
                         f"sampled {labels[0]}": _show(vb.get("sampled"), "pct"),
                         f"sampled {labels[1]}": _show(va.get("sampled"), "pct")})
    return format_table(rows, list(rows[0]) if rows else ["true value"])


def _family_table(before: Mapping[str, Any], after: Mapping[str, Any],
                  labels: tuple[str, str]) -> str:
    rows = []
    for family in sorted(set(before) | set(after)):
        fb, fa = before.get(family, {}), after.get(family, {})
        row = {"family": family, "tasks": int(fa.get("tasks") or fb.get("tasks") or 0)}
        for key, short in (("solver/accuracy", "accuracy"),
                           ("observer/perception_acc", "perception")):
            row[f"{short} {labels[0]}"] = _show(fb.get(key), "pct")
            row[f"{short} {labels[1]}"] = _show(fa.get(key), "pct")
        rows.append(row)
    return format_table(rows, list(rows[0]) if rows else ["family"])
