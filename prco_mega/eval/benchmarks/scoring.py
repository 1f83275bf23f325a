"""Scoring of the eight benchmarks: rule-based answer extraction, each benchmark's own match rule,
and its own aggregate (the numbers the paper's table reports).

Extraction: the last `\\boxed{}` of the response (the role templates ask for one); without a box,
the last `answer is X` / `Answer: X`. The official evaluations extract with an LLM (VLMEvalKit's
GPT judge); a response with neither form scores 0 here.

Match rules (`item_correct`), as the official evaluations decide once an answer is extracted:
- multiple choice (MathVerse, MathVision, MathVista, WeMath, DynaMath, MMMU-Pro, MMStar): the
  option letter, or an answer equal to one option's text;
- LogicVista: the set of letters must equal the gold set (`A, C` == `CA`);
- MathVista free-form: `integer` compares int() of the number (truncated, as the official
  normaliser does), `float` compares both rounded to the row's `precision`, lists and text go
  through the project's verifier;
- DynaMath free-form: `float` within 1e-3 absolute (`π` multiplies), text when the answer is
  contained in the gold (the official rule), else the verifier;
- MathVerse / MathVision free-form: the project's verifier (numbers, fractions, LaTeX, units);
  the official MathVerse scores equivalence with a GPT judge, so this is a rule-based stand-in.

Aggregates (`summarise`): accuracy with a per-`group` breakdown (MathVerse: problem version);
WeMath's four-dimensional Score (Strict/Loose) over its multi-step problems; DynaMath's
worst-case accuracy (a seed counts only when all its variants are right) beside the average.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

from prco_mega.rewards.verifier import answers_match, extract_boxed, normalize_answer, parse_number

_ANSWER_IS = re.compile(r"(?:answer is|answer:)\s*\**\s*([^\n]{1,80})", re.IGNORECASE)
_PI = re.compile(r"\\pi|π")
DYNAMATH_TOL = 1e-3


def extract_answer(response: str) -> str | None:
    """The boxed answer, else the last `answer is X` / `Answer: X` (trailing `.` removed)."""
    boxed = extract_boxed(response)
    if boxed is not None:
        return boxed.strip()
    found = _ANSWER_IS.findall(response[-2000:])
    return found[-1].strip().rstrip(".").strip("*").strip() if found else None


def number_of(answer: str) -> float | None:
    """The value an answer states (LaTeX, fractions, %, units allowed; `2\\pi` is 2*pi)."""
    factor = 1.0
    if _PI.search(answer):
        answer, factor = _PI.sub("", answer).strip() or "1", math.pi
    # The verifier's parser reads LaTeX and units (its unit value is not wanted here: gold
    # `1.45` against `1.45 m` compares the numbers); its canonical form is the fallback.
    parsed = parse_number(answer) or parse_number(normalize_answer(answer))
    return None if parsed is None else float(parsed.value) * factor


def letters_of(answer: str) -> set[str] | None:
    """Option letters an answer names (`A, C`, `AC`, `(A) and (C)`), or None when it is not a
    list of letters."""
    text = re.sub(r"\b(?:and|or|options?|choices?)\b|[\s,;&()\[\].]", "", answer,
                  flags=re.IGNORECASE)
    if not text or not re.fullmatch(r"[A-Ja-j]{1,10}", text):
        return None
    if len(text) > 1 and not text.isupper():
        return None  # a word such as "bad" is no letter list
    return set(text.upper())


def _mathvista_free(extracted: str, gold: str, meta: Mapping[str, Any]) -> bool:
    kind = meta.get("answer_type")
    if kind in ("integer", "float"):
        pred, want = number_of(extracted), number_of(gold)
        if pred is None or want is None:
            return False
        if kind == "integer":
            return int(pred) == int(want)
        digits = int(float(meta.get("precision") or 0))
        return round(pred, digits) == round(want, digits)
    return answers_match(extracted, gold)


def _dynamath_free(extracted: str, gold: str, meta: Mapping[str, Any]) -> bool:
    if meta.get("answer_type") == "float":
        pred, want = number_of(extracted), number_of(gold)
        return pred is not None and want is not None and abs(pred - want) <= DYNAMATH_TOL
    if answers_match(extracted, gold):
        return True
    short = " ".join(extracted.lower().split())
    return bool(short) and short in " ".join(gold.lower().split())


def item_correct(benchmark: str, extracted: str | None, gold: str,
                 meta: Mapping[str, Any]) -> bool:
    """Whether an extracted answer is right under `benchmark`'s rule (see module doc)."""
    if extracted is None or not extracted.strip():
        return False
    kind = meta.get("kind")
    if kind == "choice":
        return answers_match(extracted, gold, meta.get("options"))
    if kind == "letters":
        named = letters_of(extracted)
        if named is None and meta.get("options"):  # an option's text names its letter
            named = {letter for letter in "ABCDEFGHIJ"[:len(meta["options"])]
                     if answers_match(extracted, letter, meta["options"])} or None
        return named == set(gold.replace(",", " ").split())
    if benchmark == "mathvista":
        return _mathvista_free(extracted, gold, meta)
    if benchmark == "dynamath":
        return _dynamath_free(extracted, gold, meta)
    return answers_match(extracted, gold)


# ---------------------------------------------------------------------------------- aggregates


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
    """Benchmark-specific numbers (WeMath dimensions, DynaMath average/worst case)."""


def _pct(values: Sequence[float]) -> float | None:
    return 100.0 * fmean(values) if values else None


def by_group(records: Sequence[Mapping[str, Any]]) -> dict[str, tuple[int, float]]:
    groups: dict[str, list[float]] = defaultdict(list)
    for r in records:
        groups[str(r.get("group") or "unknown")].append(float(r["correct"]))
    return {g: (len(v), 100.0 * fmean(v)) for g, v in sorted(groups.items())}


def wemath_dimensions(records: Sequence[Mapping[str, Any]]) -> dict[str, float | int | None]:
    """WeMath's four dimensions over its multi-step problems (records sharing `wemath_id`, keys
    `Nsteps_1..N` and `Nsteps_multi`; one-step problems and incomplete groups do not count).

    Per problem, with s = all sub-problems right, a = any sub-problem right, m = multi-step right:
    IK (insufficient knowledge) = not s and not m; IG (inadequate generalisation) = s and not m;
    CM strict = s and m, CM loose = a and m; RM (rote memorisation) strict = m and not s,
    RM loose = m and not a. Score = (T - 0.5 IG - RM - IK) / T over the T problems, strict or
    loose by the RM used.
    """
    problems: dict[tuple[str, int], dict[str, bool]] = defaultdict(dict)
    for r in records:
        m = re.fullmatch(r"(\d+)steps?_(\w+)", str(r.get("wemath_key") or ""))
        if m and int(m[1]) > 1:
            problems[(str(r["wemath_id"]), int(m[1]))][m[2]] = bool(r["correct"])
    counts = dict.fromkeys(("IK", "IG", "CM_strict", "CM_loose", "RM_strict", "RM_loose"), 0)
    total = 0
    for (_, steps), parts in problems.items():
        subs = [parts.get(str(i)) for i in range(1, steps + 1)]
        if "multi" not in parts or None in subs:
            continue
        total += 1
        every, some, multi = all(subs), any(subs), parts["multi"]
        key = ("CM_strict" if every else "RM_strict") if multi else ("IG" if every else "IK")
        counts[key] += 1
        if multi:
            counts["CM_loose" if some else "RM_loose"] += 1
    out: dict[str, float | int | None] = {"problems": total, **counts}
    for kind in ("strict", "loose"):
        lost = 0.5 * counts["IG"] + counts[f"RM_{kind}"] + counts["IK"]
        out[f"score_{kind}"] = 100.0 * (total - lost) / total if total else None
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
    """The benchmark's headline score, accuracy, breakdown and extras from its records."""
    accuracy = _pct([float(r["correct"]) for r in records])
    summary = BenchSummary(benchmark, len(records), accuracy, accuracy, metric,
                           by_group(records))
    if benchmark == "wemath":
        summary.extra = wemath_dimensions(records)
        if summary.extra["score_strict"] is not None:
            summary.score = summary.extra["score_strict"]
        else:
            summary.metric = "accuracy (no complete multi-step problem for Score (Strict))"
    elif benchmark == "dynamath":
        summary.extra = dynamath_cases(records)
        summary.score = summary.extra["worst_case"]
    return summary
