"""Supervised warm-start demonstrations for the tiny model (which has no instruct checkpoint).

PRCO starts from an instruct model that already writes captions and boxed answers. The tiny CPU
model starts from random weights, so it first imitates demonstrations made from the scene facts:
Observer captions with deliberate omissions and errors, and Solver traces that compute the answer
from what the caption states (a wrong caption gives a consistently wrong answer). The result is a
formatted but imperfect policy with room for RL to improve perception and reasoning.
"""
from __future__ import annotations

import copy
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from prco_mega.data.captions import misread, render_caption
from prco_mega.data.synthetic import answer_from_facts, format_number
from prco_mega.types import Task

_OP_WORDS = {"sum": "add", "diff": "subtract", "range": "largest minus smallest", "ratio": "divide",
             "third_angle": "180 minus the two angles", "rect_area": "multiply the sides",
             "rect_perimeter": "twice the sum of the sides",
             "right_triangle_area": "half the product of the legs",
             "hypotenuse": "square root of the sum of the squares"}


@dataclass(frozen=True)
class DemoNoise:
    """How imperfect the demonstrated Observer is."""

    drop: float = 0.15
    """Probability that a needed fact is left out of a caption."""
    corrupt: float = 0.15
    """Probability that a needed fact is stated with a wrong value."""
    bias: float = 0.0
    """Probability that a fact the demonstrator systematically misperceives (`misreads`) is stated
    with its confused value, when neither dropped nor corrupted: a class-level error of the kind an
    instruct model brings. Above 0.5 the imitating policy inherits it in its greedy captions;
    whether RL can undo it depends on how well the image separates the two readings."""
    misreads: Mapping[str, Mapping[int, int]] = field(default_factory=dict)
    """family -> {true value: the value the biased demonstrator states instead}."""


def perceived_facts(facts: dict[str, Any], rng: random.Random, noise: DemoNoise) -> dict[str, Any]:
    """A copy of the facts as an imperfect observer saw them: needed items dropped or misread."""
    seen = copy.deepcopy(facts)
    kept = []
    for item in seen["items"]:
        if item["name"] in facts["needed"]:
            r = rng.random()
            if r < noise.drop:
                continue
            if r < noise.drop + noise.corrupt:
                item["value"] = misread(facts["family"], item, rng)
            elif noise.bias > 0:  # no draw at bias 0: the unbiased demonstrations stay as they were
                confused = noise.misreads.get(facts["family"], {}).get(item["value"])
                if confused is not None and rng.random() < noise.bias:
                    item["value"] = confused
        kept.append(item)
    seen["items"] = kept
    return seen


def observer_demo(task: Task, seen: dict[str, Any]) -> str:
    """The caption an observer with perception `seen` writes (question-focused bullet list)."""
    return render_caption(seen, task.question)


def solver_demo(task: Task, seen: dict[str, Any], rng: random.Random) -> str:
    """`<think>` trace using the values in `seen`; a missing value is guessed (small integer)."""
    values = {it["name"]: it["value"] for it in seen["items"]}
    full = copy.deepcopy(task.facts)
    by_name = {it["name"]: it for it in full["items"]}
    used = []
    for name in full["needed"]:  # the caption's order, so the trace reads the caption top down
        item = by_name[name]
        item["value"] = values.get(name, rng.randint(1, 9))
        used.append(f"{name} {item['value']}")
    try:
        answer = format_number(answer_from_facts(full))
    except (AssertionError, ValueError, ZeroDivisionError):  # misread legs: no integer root
        answer = format_number(Fraction(rng.randint(1, 20)))
    op = _OP_WORDS.get(full["query"]["op"], full["query"]["op"])
    return f"<think>{', '.join(used)}; {op}.</think> \\boxed{{{answer}}}"


def demonstrations(task: Task, rng: random.Random, noise: DemoNoise = DemoNoise()) -> tuple[str, str]:
    """(Observer caption, Solver response) for one synthetic task."""
    if not task.facts:
        raise ValueError(f"task {task.uid!r} has no scene facts: demonstrations need synthetic data")
    seen = perceived_facts(task.facts, rng, noise)
    return observer_demo(task, seen), solver_demo(task, seen, rng)
