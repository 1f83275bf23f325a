"""Evidence captions written from scene facts, and the perception scorer for free-text captions.

`render_caption` writes the bullet list a perfect Observer would write (optionally with facts
dropped or corrupted, for warm-start demonstrations with deliberate errors).
`perception_accuracy` reads any free-text caption and returns the fraction of the question's
needed facts it states correctly: our measure of perception on synthetic data.

How a caption "states" a fact: the caption is cut into segments (lines, `;`, sentence ends); a
segment mentions a fact when it contains the fact's key words (`red circle(s)`, `kiwi`,
`angle A`, `side AB`/`BA`, row name plus column name); the stated value is the number nearest to
the mention, where crossing a comma or an "and" costs more than any distance inside a segment
(so "3 red circles, 2 blue squares" and "red circles: 3, blue squares: 2" both read right). A
fact is correct when it is mentioned with a number and every number stated for it equals the truth.
"""
from __future__ import annotations

import math
import random
import re
from fractions import Fraction
from typing import Any

from prco_mega.data.synthetic import answer_from_facts
from prco_mega.data.synthetic_families import POLYGON_OF, POLYGONS

NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty".split())}
_NUMBER_RE = re.compile(
    r"(?<![\w.])-?\d+(?:\.\d+)?(?:/\d+)?(?![\w])|\b(?:" + "|".join(NUMBER_WORDS) + r")\b",
    re.IGNORECASE,
)
_SEGMENT_RE = re.compile(r"[\n;]+|(?<=[.!?])\s+")
_BARRIER_RE = re.compile(r",|\band\b|\bwhile\b|\bbut\b", re.IGNORECASE)
_BARRIER_COST = 10_000  # larger than any within-segment character distance


# ---------------------------------------------------------------- rendering


def _item_line(family: str, item: dict[str, Any], value: Any) -> str:
    if family == "shapes":
        kind = item["kind"] + ("" if value == 1 else "s")
        return f"- {item['color']} {kind}: {value}"
    if family == "polygons":  # the name follows the stated count, so a misread stays coherent
        kind = POLYGON_OF.get(value)
        return f"- {item['color']} shape: {kind + ', ' if kind else ''}{value} corners"
    if family == "bars":
        return f"- {item['label']} bar: {value}"
    if family == "geometry":
        unit = "°" if item["kind"] == "angle" else " cm"
        return f"- {item['kind']} {item['label']}: {value}{unit}"
    if family == "table":
        return f"- {item['row']} on {item['col']}: {value}"
    raise ValueError(f"unknown family {family!r} in facts")


def _header(facts: dict[str, Any]) -> str:
    family = facts["family"]
    if family == "shapes":
        return "- Coloured shapes (circles, squares, triangles) on a white background."
    if family == "polygons":
        return ("- Coloured polygons (triangles, squares, pentagons, hexagons) on a white "
                "background.")
    if family == "bars":
        return f'- A bar chart titled "{facts["title"]}".'
    if family == "geometry":
        return f"- A {facts['figure'].replace('_', ' ')} with vertices {facts['vertices']}."
    return f'- A table titled "{facts["title"]}" with one row per person and one column per day.'


def misread(family: str, item: dict[str, Any], rng: random.Random) -> int:
    """A wrong but plausible value: another polygon's corners, else off by 1-2 (5-10 for
    angles), never negative. Keyed on the family: shapes share kind names with polygons."""
    if family == "polygons":
        return rng.choice([c for c in POLYGONS.values() if c != item["value"]])
    delta = rng.choice([-2, -1, 1, 2]) * (5 if item.get("kind") == "angle" else 1)
    value = item["value"] + delta
    return value if value >= 0 else item["value"] + abs(delta)


def _count(fraction: float, n: int, name: str) -> int:
    """How many of n facts a `fraction` perturbs: round(fraction * n), at least 1 if > 0."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{name} ({fraction}) must be in [0, 1]")
    return 0 if fraction == 0 or n == 0 else max(1, round(fraction * n))


def render_caption(facts: dict[str, Any], question: str | None = None, *,
                   rng: random.Random | None = None, drop: float = 0.0,
                   corrupt: float = 0.0) -> str:
    """Bullet-list evidence caption of the scene facts (never states the answer).

    With a `question`, only the facts it needs (`facts["needed"]`) are listed, in that order, as a
    question-focused Observer would; otherwise every fact. `drop` / `corrupt` are the fractions of
    the listed facts omitted / given a wrong value, chosen with `rng` (default: seeded 0).
    """
    rng = rng or random.Random(0)
    by_name = {it["name"]: it for it in facts["items"]}
    # Question-focused: the needed facts in the order the question asks for them (a reader, or
    # the Solver, then finds the evidence where the question leads it to look).
    items = (list(facts["items"]) if question is None
             else [by_name[name] for name in facts["needed"] if name in by_name])
    n_drop = _count(drop, len(items), "drop")
    dropped = set(rng.sample(range(len(items)), n_drop))
    kept = [i for i in range(len(items)) if i not in dropped]
    bad = set(rng.sample(kept, min(len(kept), _count(corrupt, len(items), "corrupt"))))
    lines = [_header(facts)]
    for i in kept:
        value = misread(facts["family"], items[i], rng) if i in bad else items[i]["value"]
        lines.append(_item_line(facts["family"], items[i], value))
    return "\n".join(lines)


# ---------------------------------------------------------------- scoring


def _key_patterns(family: str, item: dict[str, Any]) -> list[re.Pattern]:
    """Regexes that must all occur in a segment for it to mention this fact."""
    if family == "shapes":
        return [re.compile(rf"\b{item['color']}\s+{item['kind']}(?:e?s)?\b", re.IGNORECASE)]
    if family == "polygons":  # one shape per colour: the colour names the fact
        return [re.compile(rf"\b{item['color']}\b", re.IGNORECASE)]
    if family == "bars":
        return [re.compile(rf"\b{re.escape(item['label'])}(?:e?s)?\b", re.IGNORECASE)]
    if family == "table":
        return [re.compile(rf"\b{re.escape(item['row'])}\b", re.IGNORECASE),
                re.compile(rf"\b{re.escape(item['col'])}[a-z]*\b", re.IGNORECASE)]
    label = item["label"]  # geometry: vertex letters are case-sensitive, "angle" is not
    if item["kind"] == "angle":
        return [re.compile(rf"(?:(?i:\bangle\b)\s*(?:(?i:at)\s+)?(?:(?i:vertex)\s+)?|∠\s*)"
                           rf"{label}(?![A-Za-z])")]
    alt = f"{label}|{label[::-1]}"
    return [re.compile(rf"(?<![A-Za-z])(?:{alt})(?![A-Za-z])")]


def _parse_number(text: str) -> Fraction | None:
    """The number `text` spells, or None for model text that only looks like one ("1.2/6",
    "5/0"): a scorer reads whatever the policy writes and must never stop the run on it."""
    word = NUMBER_WORDS.get(text.lower())
    if word is not None:
        return Fraction(word)
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def _nearest_number(segment: str, start: int, end: int) -> Fraction | None:
    """Number closest to segment[start:end], commas/"and" between them counting as far away."""
    best, best_cost = None, math.inf
    for m in _NUMBER_RE.finditer(segment):
        if start <= m.start() < end:
            continue
        value = _parse_number(m.group())
        if value is None:
            continue
        gap = segment[end:m.start()] if m.start() >= end else segment[m.end():start]
        cost = len(gap) + _BARRIER_COST * len(_BARRIER_RE.findall(gap))
        if cost < best_cost:
            best, best_cost = value, cost
    return best


def _stated_values(caption: str, patterns: list[re.Pattern]) -> list[Fraction]:
    """Every value the caption attaches to the fact whose key words are `patterns`."""
    values = []
    for segment in _SEGMENT_RE.split(caption):
        matches = [list(p.finditer(segment)) for p in patterns]
        if not all(matches):
            continue
        anchors = max(matches, key=lambda ms: ms[0].start())  # the most specific, latest key
        for m in anchors:
            value = _nearest_number(segment, m.start(), m.end())
            if value is not None:
                values.append(value)
    return values


def stated_value(caption: str, family: str, item: dict[str, Any]) -> Fraction | None:
    """The one value the caption states for this fact; None when it states none, or two."""
    values = set(_stated_values(caption, _key_patterns(family, item)))
    return values.pop() if len(values) == 1 else None


def fact_stated(caption: str, family: str, item: dict[str, Any]) -> bool:
    """True when the caption states this fact, and only with its true value."""
    return stated_value(caption, family, item) == Fraction(item["value"])


def needed_readings(caption: str, facts: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(true value, value the caption states or None) of each needed fact, as text ("5", "4/3"):
    what the per-value perception table counts."""
    by_name = {it["name"]: it for it in facts["items"]}
    out = []
    for name in facts["needed"]:
        value = stated_value(caption, facts["family"], by_name[name])
        out.append((str(Fraction(by_name[name]["value"])), None if value is None else str(value)))
    return out


def value_name(family: str, value: str) -> str | None:
    """The word for a value, where the family has one: polygons by shape ("5" -> "pentagon")."""
    if family == "polygons" and value.isdigit():
        return POLYGON_OF.get(int(value))
    return None


def value_label(family: str, value: str) -> str:
    """A true value as a reader names it: "5 (pentagon)", or the value alone."""
    name = value_name(family, value)
    return f"{value} ({name})" if name else value


def perception_accuracy(caption: str, facts: dict[str, Any]) -> float:
    """Fraction of `facts["needed"]` that `caption` states correctly (1.0 when none needed)."""
    by_name = {it["name"]: it for it in facts["items"]}
    needed = [by_name[name] for name in facts["needed"]]
    if not needed:
        return 1.0
    hits = sum(fact_stated(caption, facts["family"], it) for it in needed)
    return hits / len(needed)


def caption_answer(caption: str, facts: dict[str, Any]) -> Fraction | None:
    """The question's answer computed from the values `caption` states for the needed facts: what
    a Solver that trusts the caption answers. None when a needed fact is missing or stated with
    two values, or the query has no answer on the stated values."""
    stated = {}
    for item in facts["items"]:
        if item["name"] in facts["needed"]:
            value = stated_value(caption, facts["family"], item)
            if value is None:
                return None
            stated[item["name"]] = value
    items = [{**it, "value": stated.get(it["name"], it["value"])} for it in facts["items"]]
    try:
        return answer_from_facts({**facts, "items": items})
    except (AssertionError, ArithmeticError, ValueError):  # e.g. legs with no integer hypotenuse
        return None


def misread_keeps_answer(caption: str, facts: dict[str, Any]) -> bool:
    """The caption gets a needed fact wrong, yet its values still give the gold answer: a misread
    the Observer's utility reward cannot see (6 - 5 = 4 - 3 under a difference)."""
    return (perception_accuracy(caption, facts) < 1.0
            and caption_answer(caption, facts) == answer_from_facts(facts))
