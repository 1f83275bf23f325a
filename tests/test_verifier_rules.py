"""The verifier's rules one by one (issue 19), the labelled corpus, and the per-call budget."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from prco_mega.rewards.verifier import (
    BUDGET_STEPS,
    GoldAnswer,
    answers_match,
    extract_boxed,
    verify,
)

CORPUS = Path(__file__).parent / "data" / "verifier_corpus.jsonl"

EQUAL = {
    "symbolic": [("\\sqrt{12}", "2\\sqrt{3}"), ("\\frac{\\pi}{2}", "\\pi/2"),
                 ("1.5\\times10^3", "1500"), ("1\\frac{1}{2}", "3/2"),
                 ("\\frac{1}{\\sqrt2}", "\\frac{\\sqrt2}{2}"), ("\\frac{2}{\\sqrt3+1}", "\\sqrt3-1"),
                 ("\\sin(\\pi/6)", "1/2"), ("\\log_2 8", "3"), ("2(x+1)", "2x+2")],
    "unicode": [("½", "0.5"), ("√2", "\\sqrt{2}"), ("x²", "x^2"), ("2×3", "6"), ("6÷2", "3"),
                ("−3", "-3"), ("１２", "12"), ("1½", "3/2"), ("10⁻³", "0.001")],
    "units": [("50 cm", "0.5 m"), ("5", "5 cm"), ("5 cm", "5"), ("90 min", "1.5 h"),
              ("\\frac{\\pi}{6}", "30^\\circ"), ("30", "30°"), ("\\$5", "5 dollars"),
              ("12 \\text{ cm}^2", "0.0012 m^2"), ("5 apples", "5")],
    "relations": [("x > 3", "3 < x"), ("2x > 6", "x > 3"), ("y = 2x + 1", "2x - y + 1 = 0"),
                  ("x = 5", "5"), ("AB = 5 cm", "5"), ("x \\approx 5", "5"),
                  ("f(x) = 2x", "2x")],
    "collections": [("\\{3, 1, 2\\}", "\\{1, 2, 3\\}"), ("x = 2 \\text{ or } x = 3", "3, 2"),
                    ("\\pm 2", "2, -2"), ("(-\\infty, 1) \\cup (2, \\infty)",
                                          "(2, \\infty) \\cup (-\\infty, 1)"),
                    ("(2, 3)", "x = 2, y = 3")],
    "choices": [("A, C", "AC"), ("(A) and (C)", "C, A"), ("\\text{Option B}", "B"),
                ("B. 12 cm", "B"), ("b", "B")],
    "decimals": [("1.41", "\\sqrt{2}"), ("0.33", "1/3"), ("3.1416", "3.14"),
                 ("33.33\\%", "1/3"), ("12.57", "4\\pi"), ("2.72", "e")],
    "words": [("twenty-one", "21"), ("three", "3"), ("The value is 8", "8"),
              ("\\text{It is isosceles}", "isosceles"), ("٣", "3")],
    "solution sets": [("[2, 5]", "2 \\le x \\le 5"), ("(3, \\infty)", "x > 3"),
                      ("x < -1 \\text{ or } x > 2", "(-\\infty, -1) \\cup (2, \\infty)"),
                      ("y = 2, x = 1", "(1, 2)")],
}
DIFFERENT = {
    "dropped units": [("5 m", "5 cm"), ("5 cm", "5 cm^2"), ("0.05", "5 cm"), ("\\$5", "5 yuan"),
                      ("2 h", "2 min"), ("30^\\circ", "\\frac{\\pi}{3}")],
    "flattened braces": [("\\sqrt{2+1}", "\\sqrt{2}+1"), ("2^{x+1}", "2^x+1"),
                         ("\\frac{x+1}{2}", "\\frac{x}{2}+1"), ("e^{x}+1", "e^{x+1}")],
    "relation vs side": [("5", "x^2=5"), ("x^2=5", "5"), ("2x+1", "y=2x+1"), ("x>3", "3"),
                         ("x^2 = 4", "x = 2"), ("x > 3", "x \\ge 3"), ("x = 5", "y = 5")],
    "multi-select": [("(B) and (C)", "B"), ("B, C", "B"), ("A", "A, C"), ("ABC", "AC"),
                     ("(B) 12 cm or (C) 14 cm", "B")],
    "close numbers": [("3.14", "3.15"), ("0.3", "1/3"), ("3.146", "3.14"), ("1.73", "\\sqrt2"),
                      ("10^{20}+1", "10^{20}"), ("0.999", "1"), ("\\pi", "3")],
    "collections": [("(1, 2)", "(2, 1)"), ("(1, 2]", "(1, 2)"), ("(1, 2)", "\\{1, 2\\}"),
                    ("2", "2, 3"), ("\\pm 3", "3"), ("y = 1, x = 2", "(1, 2)")],
    "words": [("twenty-one", "19"), ("two hundred fifty", "10000"), ("twenty one", "21"),
              ("B", "B^1")],
    "solution sets": [("[2, 5]", "2 < x \\le 5"), ("(3, \\infty)", "x < 3"),
                      ("x < -1 \\text{ and } x > 2", "(-\\infty, -1) \\cup (2, \\infty)")],
}


def _cases(table: dict) -> list:
    return [pytest.param(a, b, id=f"{topic}:{a}|{b}") for topic, pairs in table.items()
            for a, b in pairs]


@pytest.mark.parametrize("a, b", _cases(EQUAL))
def test_equal_answers_match_both_ways(a, b):
    assert answers_match(a, b) and answers_match(b, a)


@pytest.mark.parametrize("a, b", _cases(DIFFERENT))
def test_different_answers_never_match(a, b):
    assert not answers_match(a, b) and not answers_match(b, a)


def test_option_text_stands_for_its_letter():
    options = ["10 cm", "12 cm", "14 cm"]
    assert answers_match("12", "B", options) and answers_match("B", "12 cm", options)
    assert not answers_match("14 cm", "B", options)
    assert not answers_match("A", "12 cm", options)


def load_corpus() -> list[dict]:
    with CORPUS.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_corpus_is_large_labelled_and_covers_the_categories():
    rows = load_corpus()
    assert len(rows) >= 500
    assert {r["label"] for r in rows} == {0, 1}
    categories = {r["category"] for r in rows}
    assert {"units", "relation", "collection", "choice_multi", "unicode", "radical_pi"} <= categories


def test_corpus_agreement_and_no_false_positive():
    rows = load_corpus()
    verdicts = [verify(r["response"], r["gold"], r.get("choices")) for r in rows]
    false_pos = [r["id"] for r, v in zip(rows, verdicts) if v == 1.0 and r["label"] == 0]
    agree = sum(v == r["label"] for r, v in zip(rows, verdicts)) / len(rows)
    assert false_pos == []
    assert agree >= 0.97


def test_corpus_answers_stay_far_below_the_budget():
    """The budget only ever stops hostile input: no labelled answer needs a quarter of it."""
    worst = 0
    for row in load_corpus():
        gold = GoldAnswer(row["gold"], row.get("choices"))
        boxed = extract_boxed(row["response"])
        if boxed is not None:
            gold.matches(boxed)
            worst = max(worst, gold.last_steps)
    assert worst <= BUDGET_STEPS // 4


@pytest.mark.parametrize("a, b", [("\\sqrt{12}", "3\\sqrt{2}"), ("2^{x+1}", "2^x+1"),
                                  ("x^2=5", "5"), ("(1,2)", "(2,1)")])
def test_no_budget_makes_different_answers_equal(a, b):
    assert not any(GoldAnswer(b, budget_steps=n).matches(a) for n in range(1, 300, 7))


def test_an_exhausted_budget_answers_not_equal():
    a, b = "(1+\\sqrt{2})^{8}", "577+408\\sqrt{2}"
    assert GoldAnswer(b).matches(a)
    small = GoldAnswer(b, budget_steps=BUDGET_STEPS)
    small.budget_steps = 40  # enough to parse the gold above, not to expand the power
    assert not small.matches(a)
    assert small.last_steps == 40  # it ran out


@pytest.mark.parametrize("a, b", [("\\pi!", "1"), ("0.5!", "x!"), ("(B)!", "y%"),
                                  ("\\infty!", "2"), ("x!", "\\sin 0.5!")])
def test_factorials_of_non_integers_have_no_value_and_never_raise(a, b):
    assert not answers_match(a, b) and not answers_match(b, a)


# Issue 30: the reward reads the whole box. A qualifier that changes the claim is a hedge a
# policy could learn (box `6 impossible` and collect the reward of `6`); units and count nouns
# are not.
HEDGES = [("6 \\text{ impossible}", "6"), ("6 impossible", "6"), ("6 \\text{ is impossible}", "6"),
          ("6 \\text{ (not possible)}", "6"), ("not 6", "6"), ("6 \\text{ not}", "6"),
          ("no solution", "6"), ("6 maybe", "6"), ("6 \\text{ or no solution}", "6"),
          ("The answer is not 6", "6"), ("6 \\text{ cm, approximately}", "6 cm"),
          ("approximately 6", "6"), ("about 6", "6"), ("roughly 12 cm", "12 cm")]
KEPT = [("6 \\text{ cm}", "6"), ("6 apples", "6"), ("6 \\text{ ways}", "6"), ("6 units", "6"),
        ("The value is 6", "6"), ("6 degrees", "6"), ("\\text{impossible}", "impossible"),
        ("\\text{no solution}", "No solution"), ("\\text{not possible}", "not possible")]


@pytest.mark.parametrize("hedged, gold", HEDGES)
def test_a_qualifier_that_changes_the_claim_is_not_the_value(hedged, gold):
    assert not answers_match(hedged, gold)
    assert not verify(f"so \\boxed{{{hedged}}}", gold)
    if not hedged.lower().startswith(("approximately", "about", "roughly")):
        assert not answers_match(gold, hedged)  # both ways, except the approximate rule below


@pytest.mark.parametrize("answer, gold", KEPT)
def test_units_count_nouns_and_answer_words_stay_accepted(answer, gold):
    assert answers_match(answer, gold) and answers_match(gold, answer)


@pytest.mark.parametrize("answer, gold, equal", [
    ("approximately 6", "approximately 6", True), ("approximately 6", "\\approx 6", True),
    ("about 6", "approximately 6", True), ("6", "approximately 6", True),
    ("approximately 7", "approximately 6", False), ("approximately 6", "6", False),
    ("approximately 3.14", "3.14", False), ("approximately 3.14", "\\approx 3.14", True),
])
def test_approximately_equals_only_an_approximate_gold(answer, gold, equal):
    assert answers_match(answer, gold) is equal
