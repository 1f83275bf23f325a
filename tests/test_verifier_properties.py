"""Properties of the verifier on generated input (issue 19): no exception on any text, bounded
work on 10 kB input, symmetry, and a value never equal to a different value (rationals in every
spelling are in test_verifier.py)."""
from __future__ import annotations

import math
import random

from hypothesis import assume, given, settings, strategies as st

from prco_mega.rewards.verifier import (
    BUDGET_STEPS,
    GoldAnswer,
    answers_match,
    normalize_answer,
    parse_number,
    verify,
)

PROPERTY = settings(max_examples=150, deadline=None)

MATH_PIECES = ["\\frac{", "{", "}", "\\sqrt[", "]", "^", "(", ")", "[", "1", "2", "0.5", "x",
               "y", ",", "=", "<", "\\le", "\\pm", "\\pi", "e", "\\left(", "\\right)", "\\{",
               "\\}", "°", "√", "²", "½", "×", "−", "cm", "m", " ", "\\text{", "%", "|", "!",
               "\\cup", "\\infty", "A", "(B)", "and", "or", "\\sin", "\\log_", "_", "'", "$",
               "\\$", "１", "km/h", "\\cdot", "/", "-", "+", "10^{", "\\approx", "\\in"]
math_text = st.lists(st.sampled_from(MATH_PIECES), max_size=60).map("".join)


@PROPERTY
@given(a=st.text(max_size=300), b=st.text(max_size=300))
def test_no_exception_on_arbitrary_unicode(a, b):
    assert answers_match(a, b) in (True, False)
    assert answers_match(a, b, choices=[a, b, "1"]) in (True, False)
    assert isinstance(normalize_answer(a), str)
    parse_number(a)


@PROPERTY
@given(a=math_text, b=math_text)
def test_no_exception_on_math_like_text_and_symmetric(a, b):
    assert answers_match(a, b) == answers_match(b, a), (a, b)
    assert isinstance(normalize_answer(a), str)


@settings(max_examples=40, deadline=None)
@given(pieces=st.lists(st.sampled_from(MATH_PIECES), min_size=1, max_size=40), data=st.data())
def test_work_is_bounded_on_10kB_inputs(pieces, data):
    """Every call stays within its budget, whatever the text; the rest is linear passes over at
    most RESPONSE_WINDOW + 3 * MAX_ANSWER_CHARS characters (the bench times it)."""
    text = ("".join(pieces) * (10_000 // max(1, len("".join(pieces))) + 1))[:10_000]
    gold_text = data.draw(st.sampled_from([text, text[:200], "1/2", "x^2+1", "(1, 2)"]))
    gold = GoldAnswer(gold_text, choices=[text[:100], "1"])
    for answer in (text, text[:250], text[-250:], "\\sqrt{12}"):
        assert gold.matches(answer) in (True, False)
        assert gold.last_steps <= BUDGET_STEPS
    assert verify(text, gold_text) in (0.0, 1.0)


# ---------------------------------------------------------------------------------- values

SQUARE_FREE = [2, 3, 5, 6, 7, 10, 11, 13, 14, 15, 17, 19, 21]


@PROPERTY
@given(k=st.integers(1, 40), r=st.sampled_from(SQUARE_FREE), k2=st.integers(1, 40),
       r2=st.sampled_from(SQUARE_FREE), pi=st.booleans())
def test_surds_and_pi_are_exact(k, r, k2, r2, pi):
    p = "\\pi" if pi else ""
    assert answers_match(f"\\sqrt{{{k * k * r}}}{p}", f"{k}\\sqrt{{{r}}}{p}")
    if (k, r) != (k2, r2):
        assert not answers_match(f"\\sqrt{{{k * k * r}}}{p}", f"{k2}\\sqrt{{{r2}}}{p}")
    assert not answers_match(f"{k}\\sqrt{{{r}}}\\pi", f"{k}\\sqrt{{{r}}}")


# Random expressions in x and y, rendered two ways and evaluated by the test's own evaluator.

def expressions(depth: int = 3):
    leaf = st.one_of(st.integers(1, 9).map(lambda n: ("n", n)), st.sampled_from([("x",), ("y",)]))
    if depth == 0:
        return leaf
    sub = expressions(depth - 1)
    return st.one_of(leaf, st.tuples(st.sampled_from(["+", "-", "*", "/"]), sub, sub),
                     st.tuples(st.just("^"), sub, st.integers(2, 3)),
                     st.tuples(st.just("sqrt"), sub))


STYLES = {
    "latex": {"/": "\\frac{{{a}}}{{({b})^{{2}}+1}}", "^": "\\left({a}\\right)^{{{n}}}",
              "sqrt": "\\sqrt{{({a})^{{2}}+1}}", "+": "\\left({a}\\right)+\\left({b}\\right)",
              "-": "\\left({a}\\right)-\\left({b}\\right)",
              "*": "\\left({a}\\right)\\cdot\\left({b}\\right)"},
    "plain": {"/": "({a})/(({b})^2+1)", "^": "({a})^{n}", "sqrt": "sqrt(({a})^2+1)",
              "+": "({a})+({b})", "-": "({a})-({b})", "*": "({a})*({b})"},
}
"""Two independent ways to write the same expression tree (LaTeX and plain text)."""


def render(e, style: str) -> str:
    kind = e[0]
    if kind == "n":
        return str(e[1])
    if kind in ("x", "y"):
        return kind
    a = render(e[1], style)
    b = render(e[2], style) if kind in "+-*/" else ""
    return STYLES[style][kind].format(a=a, b=b, n=e[2] if kind == "^" else "")


def value(e, x: float, y: float) -> float:
    kind = e[0]
    if kind == "n":
        return float(e[1])
    if kind in ("x", "y"):
        return x if kind == "x" else y
    if kind == "sqrt":
        return math.sqrt(value(e[1], x, y) ** 2 + 1)
    a = value(e[1], x, y)
    if kind == "^":
        return a ** e[2]
    b = value(e[2], x, y)
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / (b * b + 1)}[kind]


@PROPERTY
@given(e=expressions())
def test_an_expression_equals_its_other_rendering(e):
    assert answers_match(render(e, "latex"), render(e, "plain")), render(e, "latex")


@PROPERTY
@given(e=expressions(), f=expressions())
def test_expressions_with_different_values_never_match(e, f):
    rng = random.Random(0)
    points = [(rng.uniform(-2, 2), rng.uniform(-2, 2)) for _ in range(5)]
    try:
        differ = any(not math.isclose(value(e, x, y), value(f, x, y), rel_tol=1e-6, abs_tol=1e-9)
                     for x, y in points)
    except OverflowError:
        differ = False
    assume(differ)
    assert not answers_match(render(e, "latex"), render(f, "latex")), render(f, "latex")
    assert not answers_match(render(e, "plain"), render(f, "latex")), render(f, "latex")
