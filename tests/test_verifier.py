"""The answer verifier: extraction of the last box, each normalisation rule, and robustness."""
from __future__ import annotations

from decimal import Decimal, getcontext
from fractions import Fraction

import pytest
from hypothesis import given, settings, strategies as st

from prco_mega.rewards.verifier import (
    BUDGET_STEPS,
    MAX_ANSWER_CHARS,
    RESPONSE_WINDOW,
    GoldAnswer,
    extract_boxed,
    normalize_answer,
    verify,
)

PROPERTY = settings(max_examples=200, deadline=None)


def boxed(answer: str) -> str:
    return f"<think>some reasoning</think> The final answer is \\boxed{{{answer}}}."


# ---------------------------------------------------------------------------- extraction


@pytest.mark.parametrize("text, expected", [
    ("\\boxed{3}", "3"),
    ("first \\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\fbox{7}", "7"),
    ("\\boxed {4}", "4"),
    ("\\boxed{\\boxed{5}}", "\\boxed{5}"),  # the outer box closes last
    ("\\boxed{1} and a cut-off \\boxed{2", "1"),  # the last box never closes
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not close the box
    ("\\boxed{}", ""),
    ("no box at all: 42", None),
    ("\\boxedx{3}", None),
    ("{\\boxed{9}} }}}", "9"),
])
def test_extract_boxed_takes_last_balanced_box(text, expected):
    assert extract_boxed(text) == expected


@PROPERTY
@given(prefix=st.text(alphabet=st.characters(blacklist_characters="\\{}")),
       content=st.text(alphabet=st.characters(blacklist_characters="\\{}"), max_size=50))
def test_extract_boxed_returns_the_content_written(prefix, content):
    assert extract_boxed(prefix + "\\boxed{" + content + "}") == content


def test_extract_boxed_only_reads_the_tail_of_long_responses():
    text = "\\boxed{1}" + "x" * 10_000
    assert extract_boxed(text) is None
    assert extract_boxed("x" * 10_000 + "\\boxed{1}") == "1"


# ------------------------------------------------------------------------- normalisation rules

MATCHING = [
    # integers, signs, thousands separators, decimals
    ("42", "42"), ("-3", "-3"), ("+3", "3"), ("1,000", "1000"), ("1{,}000", "1000"),
    ("1\\,000", "1000"), ("12,345.5", "12345.5"), ("3.0", "3"), (".5", "0.5"), ("0.50", "1/2"),
    # fractions in every spelling
    ("\\frac{1}{2}", "0.5"), ("\\dfrac{1}{2}", "1/2"), ("\\tfrac{1}{2}", "1/2"),
    ("\\dfrac12", "0.5"),
    ("-\\frac{3}{4}", "-0.75"), ("\\frac{-3}{4}", "-3/4"), ("2/4", "1/2"), ("(1/2)", "1/2"),
    # the rounding rule: a decimal with 2+ places equals an exact value that rounds to it
    ("0.3333333", "1/3"), ("\\frac{2}{3}", "0.6666667"), ("0.333", "1/3"), ("1/3", "0.333333"),
    ("0.67", "2/3"), ("1.41", "\\sqrt{2}"), ("3.1416", "3.14"),
    # percentages: a mark on one side accepts x or x/100 on the other
    ("50\\%", "50%"), ("50", "50%"), ("0.5", "50%"), ("\\frac{1}{2}", "50\\%"), ("50\\%", "0.5"),
    ("50%", "50"),
    # units and degrees
    ("12 cm", "12"), ("12cm", "12"), ("12\\text{ cm}", "12"), ("12 \\mathrm{cm}^2", "12"),
    ("30^\\circ", "30"), ("30^{\\circ}", "30"), ("30°", "30"), ("30\\degree", "30"),
    ("5 apples", "5"), ("\\$5", "5"), ("12", "12 cm"),
    # LaTeX wrappers and equations
    ("$\\frac{1}{2}$", "1/2"), ("\\left( 1, 2 \\right)", "(1,2)"), ("(0.5, 3)", "(1/2, 3)"),
    ("x = 5", "5"), ("x \\approx 5", "5"), ("\\text{isosceles}", "Isosceles"),
    ("\\sqrt{2}", "\\sqrt2"), ("\\textbf{7}", "7"),
]


@pytest.mark.parametrize("answer, gold", MATCHING)
def test_equivalent_answers_verify(answer, gold):
    assert verify(boxed(answer), gold) == 1.0


NOT_MATCHING = [
    ("0.5\\%", "50%"),  # marks on both sides: the numbers themselves must agree
    ("2x", "2"),  # a single letter after a number is a variable, not a unit
    ("0.334", "1/3"), ("0.3", "1/3"),  # rounds otherwise; one place is too coarse for a rational
    ("0.33", "0.34"), ("3.146", "3.14"),  # two decimals: the longer must round to the shorter
    ("(1, 2)", "[1, 2]"),  # different brackets are different objects
    ("(2, 1)", "(1, 2)"),
    ("-3", "3"), ("1,2", "12"), ("1/0", "0"), ("", "0"), ("\\sqrt{2}", "2"),
    ("3", "B"),  # a multiple-choice gold needs a letter or an option's text
]


@pytest.mark.parametrize("answer, gold", NOT_MATCHING)
def test_different_answers_do_not_verify(answer, gold):
    assert verify(boxed(answer), gold) == 0.0


@pytest.mark.parametrize("answer", ["B", "b", "(B)", "B.", "B)", "\\text{B}", "\\text{(B)}",
                                    "Option B", "(B) 12 cm", "B. 12 cm", "12 cm", "12"])
def test_multiple_choice_letters_and_option_text(answer):
    choices = ["10 cm", "12 cm", "14 cm", "16 cm"]
    assert verify(boxed(answer), "B", choices) == 1.0
    assert verify(boxed(answer), "C", choices) == 0.0


def test_gold_given_as_option_text_accepts_the_letter():
    choices = ["\\frac{1}{3}", "\\frac{1}{2}"]
    assert verify(boxed("B"), "1/2", choices) == 1.0
    assert verify(boxed("0.5"), "1/2", choices) == 1.0
    assert verify(boxed("A"), "1/2", choices) == 0.0


def test_no_box_empty_box_and_overlong_box_score_zero():
    assert verify("the answer is 3", "3") == 0.0
    assert verify("\\boxed{}", "3") == 0.0
    long_answer = "3" + " " * MAX_ANSWER_CHARS
    assert verify(f"\\boxed{{{long_answer}}}", "3") == 0.0


def test_only_the_last_box_counts():
    assert verify("\\boxed{3} no wait \\boxed{4}", "4") == 1.0
    assert verify("\\boxed{3} no wait \\boxed{4}", "3") == 0.0


def test_model_text_is_never_executed():
    # `eval` of these would either be true or raise; our parser reads no Python syntax.
    assert verify(boxed("__import__('os').getcwd()"), "0") == 0.0
    assert verify(boxed("__import__('os').system('true')"), "0") == 0.0
    assert verify(boxed("2**10"), "1024") == 0.0
    # Arithmetic is evaluated by our own evaluator over the parsed tree, not by Python.
    assert verify(boxed("1+1"), "2") == 1.0
    assert verify(boxed("2^{10}"), "1024") == 1.0


@pytest.mark.parametrize("answer, canonical", [
    ("0.5", "1/2"), ("\\frac{1}{2}", "1/2"), ("-\\dfrac{6}{4}", "-3/2"), ("50\\%", "50%"),
    ("1,000 cm", "10m"), ("\\text{(C)}", "C"), ("(1, 0.5)", "(1,1/2)"),
    ("Right Angle", "rightangle"), ("A, C", "AC"), ("\\sqrt{12}", "2\\sqrt{3}"),
])
def test_normalize_answer_canonical_forms(answer, canonical):
    assert normalize_answer(answer) == canonical


# ------------------------------------------------------------------------------ properties


def spellings(value: Fraction) -> list[str]:
    """Independent renderings of a rational as a model might write it."""
    p, q = value.numerator, value.denominator
    sign, ap = ("-" if p < 0 else ""), abs(p)
    forms = [f"{p}/{q}", f"{sign}\\frac{{{ap}}}{{{q}}}", f"\\dfrac{{{p}}}{{{q}}}",
             f"$\\tfrac{{{p}}}{{{q}}}$"]
    if q == 1:
        forms += [str(p), f"{p}.0", f"{sign}{ap:,}"]
    if ap < 10 and q < 10:
        forms.append(f"{sign}\\dfrac{ap}{q}")
    forms += [f"{sign}\\sqrt{{\\frac{{{ap * ap}}}{{{q * q}}}}}", f"\\frac{{{2 * p}}}{{{2 * q}}}",
              f"{sign}{ap}÷{q}"]
    if q > 1 and ap > q and ap % q:
        forms.append(f"{sign}{ap // q}\\frac{{{ap % q}}}{{{q}}}")  # a mixed number
    q_reduced = q
    for factor in (2, 5):
        while q_reduced % factor == 0:
            q_reduced //= factor
    if q_reduced == 1:  # terminating decimal: write it out exactly
        getcontext().prec = 60
        forms.append(format(Decimal(p) / Decimal(q), "f"))
    return forms


rationals = st.fractions(min_value=-10_000, max_value=10_000, max_denominator=64)


@PROPERTY
@given(value=rationals, data=st.data())
def test_every_spelling_of_a_rational_agrees_as_gold_and_as_answer(value, data):
    forms = spellings(value)
    gold = data.draw(st.sampled_from(forms))
    answer = data.draw(st.sampled_from(forms))
    assert verify(boxed(answer), gold) == 1.0, (answer, gold)


def test_half_agrees_in_all_three_spellings():
    forms = ["0.5", "1/2", "\\frac{1}{2}"]
    for gold in forms:
        for answer in forms:
            assert verify(boxed(answer), gold) == 1.0


@PROPERTY
@given(a=rationals, b=rationals, data=st.data())
def test_distinct_rationals_disagree(a, b, data):
    if a == b:
        b = a + Fraction(1, 97)
    forms_a = [f for f in spellings(a) if "." not in f]  # exact spellings: no tolerance applies
    answer = data.draw(st.sampled_from(forms_a))
    gold = data.draw(st.sampled_from([f for f in spellings(b) if "." not in f]))
    assert verify(boxed(answer), gold) == 0.0, (answer, gold)


@PROPERTY
@given(a=st.decimals(min_value=-1000, max_value=1000, places=3, allow_nan=False),
       b=st.decimals(min_value=-1000, max_value=1000, places=3, allow_nan=False))
def test_distinct_decimals_disagree(a, b):
    expected = 1.0 if a == b else 0.0
    assert verify(boxed(format(a, "f")), format(b, "f")) == expected


hostile_alphabet = st.sampled_from(
    ["\\boxed{", "\\fbox{", "{", "}", "\\", "\\frac", "\\dfrac", "\\text{", "\\left(", "$",
     "%", "\\%", "^\\circ", "°", "1", "0.5", ",", "/", "-", "=", " ", "B", "(", ")", "é",
     "\U0001F600",
     "\x00", "\n", "<think>", "</think>"])


@PROPERTY
@given(pieces=st.lists(hostile_alphabet, max_size=300), gold=st.text(max_size=40))
def test_never_raises_on_latex_like_garbage(pieces, gold):
    text = "".join(pieces)
    assert verify(text, gold) in (0.0, 1.0)
    assert verify(text, text) in (0.0, 1.0)
    assert isinstance(normalize_answer(text), str)


@PROPERTY
@given(text=st.text(), gold=st.text())
def test_never_raises_on_arbitrary_unicode(text, gold):
    assert verify(text, gold) in (0.0, 1.0)
    assert verify("\\boxed{" + text + "}", gold, choices=[gold, text]) in (0.0, 1.0)


HOSTILE = {
    "open boxes": "\\boxed{" * 30_000,
    "deep braces": "\\boxed{" + "{" * 100_000 + "1" + "}" * 100_000 + "}",
    "deep fractions": "\\boxed{" + "\\frac{" * 40_000 + "}" * 40_000 + "}",
    "long number": "\\boxed{" + "1" * 200_000 + "}",
    "comma digits": "\\boxed{" + "1," * 100_000 + "}",
    "many boxes": "\\boxed{1}" * 25_000,
    "backslashes": "\\" * 200_000,
    "unicode": "\U0001F600é\u2212" * 70_000,
    "boxed tail of long answer": "\\boxed{" + "1" * 3000 + "/" + "2" * 1000 + "}",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_bounded_work_on_hostile_200k_strings(name):
    """Charged work stays within the budget; the only uncharged passes read at most the last
    RESPONSE_WINDOW characters of the response (tools/bench_verifier.py times the calls)."""
    text = HOSTILE[name]
    boxed_text = extract_boxed(text)
    assert boxed_text is None or len(boxed_text) <= RESPONSE_WINDOW
    for gold in (GoldAnswer("1/2"), GoldAnswer("B", choices=["1", "2"])):
        assert gold.matches(boxed_text or text) in (True, False)
        assert gold.last_steps <= BUDGET_STEPS
    assert verify(text, "1/2") in (0.0, 1.0)
    assert isinstance(normalize_answer(text), str)


@pytest.mark.parametrize("name", ["deep braces", "deep fractions", "long number", "comma digits",
                                  "unicode", "many boxes"])
def test_a_hostile_gold_is_never_parsed(name):
    gold = GoldAnswer(HOSTILE[name])
    assert gold.too_long and gold.item is None
    assert not gold.matches("1")
