"""Each benchmark's scoring rule against hand-labelled predictions, and the aggregates the paper
reports (WeMath's four dimensions, DynaMath's worst case, MathVerse per problem version)."""
from __future__ import annotations

import pytest

from prco_mega.eval.benchmarks.scoring import (dynamath_cases, extract_answer, item_correct,
                                          letters_of, number_of, summarise, wemath_dimensions)

MC4 = {"kind": "choice", "options": ["3/11", "8/11", "6/11", "3/5"]}
DEGREES = {"kind": "choice", "options": ["30°", "45°", "60°"]}
FREE = {"kind": "free"}

# (benchmark, response, gold, meta, hand label)
LABELLED = [
    # multiple choice: letter, option text, letter with its text; wrong letter; no answer
    ("mathvista", "<think>blue is 8 of 11</think> \\boxed{B}", "B", MC4, True),
    ("mathvista", "\\boxed{8/11}", "B", MC4, True),
    ("mathvista", "\\boxed{\\frac{8}{11}}", "B", MC4, True),
    ("mathvista", "\\boxed{(B) 8/11}", "B", MC4, True),
    ("mathvista", "\\boxed{C}", "B", MC4, False),
    ("mathvista", "I think it is B but cannot say.", "B", MC4, False),
    ("mmstar", "The answer is C.", "C", {"kind": "choice", "options": ["a", "b", "c"]}, True),
    ("mmmu_pro_v", "\\boxed{Option D}", "D", {"kind": "choice", "options": list("pqrstu")}, True),
    ("wemath", "\\boxed{9}", "B", {"kind": "choice", "options": ["6", "9", "12"]}, True),
    ("mathverse", "\\boxed{45°}", "B", DEGREES, True),
    # options shown only in the image (MathVerse vision versions): the letter alone
    ("mathverse", "\\boxed{(C)}", "C", {"kind": "choice", "options": None}, True),
    ("mathverse", "\\boxed{45°}", "C", {"kind": "choice", "options": None}, False),
    # MathVista free form: integer truncates like the official normaliser; float rounds to the
    # row's precision; lists element-wise
    ("mathvista", "\\boxed{14}", "14", {"kind": "free", "answer_type": "integer"}, True),
    ("mathvista", "\\boxed{14.0}", "14", {"kind": "free", "answer_type": "integer"}, True),
    ("mathvista", "\\boxed{13}", "14", {"kind": "free", "answer_type": "integer"}, False),
    ("mathvista", "\\boxed{1.449}", "1.45",
     {"kind": "free", "answer_type": "float", "precision": 2.0}, True),
    ("mathvista", "\\boxed{\\$1.45}", "1.45",
     {"kind": "free", "answer_type": "float", "precision": "2"}, True),  # TSV precision text
    ("mathvista", "\\boxed{1.4}", "1.45",
     {"kind": "free", "answer_type": "float", "precision": 2.0}, False),
    ("mathvista", "\\boxed{1.5}", "1.45",
     {"kind": "free", "answer_type": "float", "precision": 1.0}, False),
    ("mathvista", "\\boxed{1.4}", "1.4",
     {"kind": "free", "answer_type": "float", "precision": 1.0}, True),
    ("mathvista", "\\boxed{[2007, 2008]}", "[2007, 2008]",
     {"kind": "free", "answer_type": "list"}, True),
    ("mathvista", "\\boxed{[2008, 2007]}", "[2007, 2008]",
     {"kind": "free", "answer_type": "list"}, False),
    # DynaMath: float within 1e-3 absolute, pi multiplies; text: contained in the gold
    ("dynamath", "\\boxed{3.1416}", "3.142", {"kind": "free", "answer_type": "float"}, True),
    ("dynamath", "\\boxed{\\pi}", "3.142", {"kind": "free", "answer_type": "float"}, True),
    ("dynamath", "\\boxed{3.14}", "3.142", {"kind": "free", "answer_type": "float"}, False),
    ("dynamath", "\\boxed{y = 2x}", "the line y = 2x", {"kind": "free", "answer_type": "text"},
     True),
    ("dynamath", "\\boxed{circle}", "ellipse", {"kind": "free", "answer_type": "text"}, False),
    ("dynamath", "\\boxed{B}", "B", {"kind": "choice", "options": ["P", "Q", "R"]}, True),
    # LogicVista: the set of letters
    ("logicvista", "\\boxed{C, A}", "A, C", {"kind": "letters", "options": None}, True),
    ("logicvista", "\\boxed{AC}", "A, C", {"kind": "letters", "options": None}, True),
    ("logicvista", "\\boxed{A}", "A, C", {"kind": "letters", "options": None}, False),
    ("logicvista", "\\boxed{square}", "B", {"kind": "letters", "options": ["circle", "square"]},
     True),
    ("logicvista", "\\boxed{bad}", "B", {"kind": "letters", "options": None}, False),
    # MathVerse / MathVision free form: the project's verifier
    ("mathverse", "\\boxed{0.75}", "\\frac{3}{4}", FREE, True),
    ("mathverse", "\\boxed{x = 12}", "12", FREE, True),
    ("mathvision", "\\boxed{2\\sqrt{2}}", "2\\sqrt{2}", FREE, True),
    ("mathvision", "\\boxed{8}", "7", FREE, False),
    ("mathvision", "no box, no answer", "7", FREE, False),
]


@pytest.mark.parametrize("benchmark,response,gold,meta,label", LABELLED)
def test_hand_labelled_predictions(benchmark, response, gold, meta, label):
    assert item_correct(benchmark, extract_answer(response), gold, meta) is label


def test_extraction_and_parsing_helpers():
    assert extract_answer("a \\boxed{1} then \\boxed{2}") == "2"
    assert extract_answer("So the answer is **12**.") == "12"
    assert extract_answer("nothing here") is None
    assert number_of("2\\pi") == pytest.approx(6.283185, rel=1e-6)
    assert number_of("50\\%") == 50.0 and number_of("3 cm") == 3.0 and number_of("red") is None
    assert letters_of("(A) and (C)") == {"A", "C"} and letters_of("cab") is None


def _wemath(problem, key, correct):
    return {"wemath_id": problem, "wemath_key": key, "correct": correct, "group": key[:6]}


def test_wemath_four_dimensions_by_hand():
    # p1 all right (CM); p2 subs right, multi wrong (IG); p3 one sub wrong, multi right
    # (RM strict, CM loose); p4 (3 steps) all subs wrong, multi right (RM both); p5 sub wrong
    # and multi wrong (IK); p6 lacks its multi row (not counted); one-step rows never count.
    records = [
        *(_wemath("p1", k, True) for k in ("2steps_1", "2steps_2", "2steps_multi")),
        _wemath("p2", "2steps_1", True), _wemath("p2", "2steps_2", True),
        _wemath("p2", "2steps_multi", False),
        _wemath("p3", "2steps_1", True), _wemath("p3", "2steps_2", False),
        _wemath("p3", "2steps_multi", True),
        *(_wemath("p4", f"3steps_{i}", False) for i in (1, 2, 3)),
        _wemath("p4", "3steps_multi", True),
        _wemath("p5", "2steps_1", False), _wemath("p5", "2steps_2", True),
        _wemath("p5", "2steps_multi", False),
        _wemath("p6", "2steps_1", True),
        _wemath("p7", "1step", False),
    ]
    dims = wemath_dimensions(records)
    assert dims["problems"] == 5
    assert (dims["IK"], dims["IG"], dims["CM_strict"], dims["RM_strict"]) == (1, 1, 1, 2)
    assert (dims["CM_loose"], dims["RM_loose"]) == (2, 1)
    assert dims["score_strict"] == pytest.approx(100 * (5 - 0.5 - 2 - 1) / 5)
    assert dims["score_loose"] == pytest.approx(100 * (5 - 0.5 - 1 - 1) / 5)
    summary = summarise("wemath", "four-dimensional Score (Strict)", records)
    assert summary.score == pytest.approx(30.0)
    assert summary.accuracy == pytest.approx(100 * 10 / 18)


def test_wemath_without_complete_problem_falls_back_to_accuracy_and_says_so():
    summary = summarise("wemath", "four-dimensional Score (Strict)",
                        [_wemath("p7", "1step", True), _wemath("p8", "1step", False)])
    assert summary.score == summary.accuracy == 50.0
    assert summary.metric.startswith("accuracy")


def test_dynamath_worst_case_needs_every_variant_right():
    records = [{"seed": s, "correct": c, "group": "g"}
               for s, c in [("1", True), ("1", True), ("2", True), ("2", False), ("3", False)]]
    cases = dynamath_cases(records)
    assert cases == {"seeds": 3, "average": pytest.approx(60.0),
                     "worst_case": pytest.approx(100 / 3)}
    assert summarise("dynamath", "worst case", records).score == pytest.approx(100 / 3)


def test_mathverse_is_broken_down_per_problem_version():
    records = [{"group": v, "correct": c} for v, c in [
        ("Vision Only", True), ("Vision Only", False), ("Text Dominant", True)]]
    summary = summarise("mathverse", "accuracy", records)
    assert summary.groups == {"Text Dominant": (1, 100.0), "Vision Only": (2, 50.0)}
    assert summary.score == summary.accuracy == pytest.approx(200 / 3)
