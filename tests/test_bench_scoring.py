"""Each benchmark's extraction and rule against hand-made responses, with the verdict of the
official script the rule follows written beside each case (quirks included), and the aggregates
the paper reports (WeMath S1-S3 and Score over 525, DynaMath's worst case, MathVerse per problem
version, MMStar per l2 category)."""
from __future__ import annotations

import pytest

from prco_mega.eval.benchmarks.scoring import (
    extract_answer,
    infer_option,
    item_correct,
    letters_of,
    mathvista_normalized,
    value_of,
    verifier_correct,
)
from prco_mega.eval.benchmarks.summary import (
    WEMATH_PROBLEMS,
    dynamath_cases,
    summarise,
    wemath_dimensions,
)

VISTA_MC = {"kind": "choice", "question_type": "multi_choice",
            "options": ["3/11", "8/11", "6/11", "3/5"]}
VISTA_INT = {"kind": "free", "answer_type": "integer"}
VISTA_FLOAT = {"kind": "free", "answer_type": "float", "precision": 2.0}
VISTA_LIST = {"kind": "free", "answer_type": "list"}
WEMATH = {"kind": "choice", "options": ["6", "9", "12"]}
SIX = {"kind": "choice", "options": ["p", "q", "r", "s", "t", "u"]}
STAR = {"kind": "choice", "options": ["red", "blue", "green", "yellow"]}
VISION_MC = {"kind": "choice", "options": ["2", "4", "6", "8", "10"]}
FREE = {"kind": "free"}
VERSE_MC = {"kind": "choice", "options": ["30°", "45°", "60°", "90°"]}
DYNA_FLOAT = {"kind": "free", "answer_type": "float"}
DYNA_MC = {"kind": "choice", "answer_type": "multiple choice", "options": ["P", "Q", "R"]}
DYNA_TEXT = {"kind": "free", "answer_type": "text"}
LETTERS = {"kind": "letters", "options": None}

# (benchmark, response, gold, meta, the official script's verdict)  # why
OFFICIAL = [
    # WeMath: vlmeval/dataset/utils/wemath.py load_and_process_data (the authors' rule)
    ("wemath", "Reasoning...\n<Answer>: B", "B", WEMATH, True),  # its own prompt's format
    ("wemath", "Reasoning...\nAnswer: B.", "B", WEMATH, True),
    ("wemath", "B", "B", WEMATH, True),  # a bare letter
    ("wemath", "B. 9", "B", WEMATH, True),
    ("wemath", "Because the side is 3, the area is 9.", "B", WEMATH, True),  # quirk: first char
    ("wemath", "Because the side is 3, the area is 9.", "A", WEMATH, False),
    ("wemath", "Reasoning...\nAnswer: 9", "B", WEMATH, False),  # not a letter after "Answer"
    ("wemath", "<Answer>: C", "B", WEMATH, False),
    ("wemath", "so \\boxed{B}", "B", WEMATH, True),
    ("wemath", "so \\boxed{9}", "B", WEMATH, True),  # VLMEvalKit's can_infer: option text
    # MMMU-Pro: image_mcq.py cot_postproc, then can_infer
    ("mmmu_pro_v", "Step by step...\nAnswer: D", "D", SIX, True),
    ("mmmu_pro_v", "D", "D", SIX, True),  # a bare letter
    ("mmmu_pro_v", "The figure shows a pendulum, so D", "D", SIX, True),
    ("mmmu_pro_v", "It is either A or B.", "A", SIX, False),  # two letters: not inferred
    ("mmmu_pro_v", "\\boxed{Option D}", "D", SIX, True),
    # MMStar: ImageMCQDataset -> can_infer
    ("mmstar", "C", "C", STAR, True),
    ("mmstar", "The answer is C.", "C", STAR, True),
    ("mmstar", "A red block is top left, so the answer is A", "A", STAR, True),  # "answer is A"
    ("mmstar", "\\boxed{green}", "C", STAR, True),  # the option's text
    ("mmstar", "\\boxed{B}", "C", STAR, False),
    # MathVista: evaluation/calculate_score.py normalize_extracted_answer + safe_equal
    ("mathvista", "\\boxed{B}", "B", VISTA_MC, True),
    ("mathvista", "\\boxed{8/11}", "B", VISTA_MC, True),
    ("mathvista", "\\boxed{(b)}", "B", VISTA_MC, True),  # "(b)" -> "B"
    ("mathvista", "\\boxed{b}", "B", VISTA_MC, False),  # quirk: nearest choice to "b" is 3/5
    ("mathvista", "\\boxed{\\frac{8}{11}}", "B", VISTA_MC, True),  # quirk: nearest choice
    ("mathvista", "I cannot tell.", "D", VISTA_MC, True),  # quirk: "" -> the shortest choice
    ("mathvista", "I cannot tell.", "B", VISTA_MC, False),
    ("mathvista", "\\boxed{14}", "14", VISTA_INT, True),
    ("mathvista", "\\boxed{14.0}", "14", VISTA_INT, True),  # int(float("14.0"))
    ("mathvista", "\\boxed{seven}", "7", VISTA_INT, False),  # float("seven") fails
    ("mathvista", "\\boxed{13}", "14", VISTA_INT, False),
    ("mathvista", "\\boxed{1.449}", "1.45", VISTA_FLOAT, True),  # round(x, precision)
    ("mathvista", "\\boxed{\\$1.45}", "1.45", VISTA_FLOAT, True),
    ("mathvista", "\\boxed{1.4}", "1.45", VISTA_FLOAT, False),
    ("mathvista", "\\boxed{1.5}", "1.50", VISTA_FLOAT, False),  # quirk: "1.5" != "1.50"
    ("mathvista", 'The answer is "14".', "14", VISTA_INT, True),  # its quick extraction
    ("mathvista", "\\boxed{[2007, 2008]}", "[2007, 2008]", VISTA_LIST, True),
    ("mathvista", "\\boxed{[2007,2008]}", "[2007, 2008]", VISTA_LIST, False),  # string compare
    ("mathvista", "\\boxed{[2008, 2007]}", "[2007, 2008]", VISTA_LIST, False),
    # MathVision: the PRCO authors' vlmeval/dataset/utils/mathv.py post_check, is_equal
    ("mathvision", "\\boxed{C}", "C", VISION_MC, True),
    ("mathvision", "\\boxed{6}", "C", VISION_MC, True),  # can_infer_text: the option's text
    ("mathvision", "C", "C", VISION_MC, True),  # a bare letter (prefetch on the response)
    ("mathvision", "\\boxed{7}", "7", FREE, True),
    ("mathvision", "\\boxed{7.0}", "7", FREE, True),  # numbers within 1e-6
    ("mathvision", "\\boxed{2.828427}", "2\\sqrt{2}", FREE, True),
    ("mathvision", "\\boxed{2.83}", "2\\sqrt{2}", FREE, False),  # 1e-6, no rounding rule
    ("mathvision", "\\boxed{8}", "7", FREE, False),
    ("mathvision", "no box, no answer", "7", FREE, False),
    # MathVerse: utils/mathverse.py post_check_score (exact), else the GPT judge (verifier)
    ("mathverse", "\\boxed{B}", "B", VERSE_MC, True),
    ("mathverse", "\\boxed{45°}", "B", VERSE_MC, True),  # judge: the option's text
    ("mathverse", "\\boxed{(C)}", "C", {"kind": "choice", "options": None}, True),
    ("mathverse", "\\boxed{0.75}", "\\frac{3}{4}", FREE, True),  # judge: 0.5m = 50cm
    ("mathverse", "\\boxed{x = 12}", "12", FREE, True),
    ("mathverse", "\\boxed{13}", "12", FREE, False),
    # DynaMath: vlmeval/dataset/dynamath.py parse_answer, DynaMath_auxeval
    ("dynamath", "\\boxed{3.1416}", "3.142", DYNA_FLOAT, True),  # |diff| <= 1e-3
    ("dynamath", "\\boxed{3.14}", "3.142", DYNA_FLOAT, False),
    ("dynamath", '{"solution": "f(1) = pi", "short answer": "3.142"}', "3.142", DYNA_FLOAT,
     True),  # its own JSON format
    ("dynamath", "\\boxed{\\pi}", "3.142", DYNA_FLOAT, True),  # GPT re-extraction: verifier
    ("dynamath", '{"solution": "Q", "short answer": "B"}', "B", DYNA_MC, True),
    ("dynamath", "\\boxed{B}", "B", DYNA_MC, True),
    ("dynamath", "B) Q is the highest point", "B", DYNA_MC, True),  # quirk: first 3 chars
    ("dynamath", "\\boxed{C is highest}", "C", DYNA_MC, False),  # C and E: does not parse
    ("dynamath", "\\boxed{y = 2x}", "the line y = 2x", DYNA_TEXT, True),  # contained in gold
    ("dynamath", "\\boxed{circle}", "ellipse", DYNA_TEXT, False),
    # LogicVista: utils/logicvista.py LogicVista_auxeval (judge letters -> the verifier)
    ("logicvista", "\\boxed{C, A}", "A, C", LETTERS, True),
    ("logicvista", "\\boxed{AC}", "A, C", LETTERS, True),
    ("logicvista", "\\boxed{A}", "A, C", LETTERS, False),
    ("logicvista", "The answer is A, C", "A, C", LETTERS, True),
    ("logicvista", "\\boxed{3}", "3", LETTERS, False),  # quirk: a digit answer never matches
    ("logicvista", "\\boxed{square}", "B", {"kind": "letters", "options": ["circle", "square"]},
     True),
    ("logicvista", "\\boxed{bad}", "B", LETTERS, False),
]


@pytest.mark.parametrize("benchmark,response,gold,meta,official", OFFICIAL)
def test_scored_as_the_official_script_scores(benchmark, response, gold, meta, official):
    extracted = extract_answer(benchmark, response, meta)
    assert item_correct(benchmark, extracted, gold, meta, response) is official


def test_the_verifier_is_a_second_column_not_the_headline():
    # 2.83 rounds 2 sqrt 2 (the reward's rounding rule) but is not within MathVision's 1e-6
    response = "\\boxed{2.83}"
    assert verifier_correct(response, "2\\sqrt{2}", FREE)
    assert not item_correct("mathvision", extract_answer("mathvision", response, FREE),
                            "2\\sqrt{2}", FREE, response)
    records = [{"correct": False, "verifier_correct": True, "group": "g"},
               {"correct": True, "verifier_correct": True, "group": "g"}]
    summary = summarise("mathvision", "accuracy", records)
    assert (summary.score, summary.verifier_accuracy) == (50.0, 100.0)
    assert summarise("mathvision", "accuracy", [{"correct": True}]).verifier_accuracy is None


def test_extraction_and_parsing_helpers():
    assert extract_answer("mathverse", "a \\boxed{1} then \\boxed{2}", FREE) == "2"
    assert extract_answer("mathverse", "So the answer is **12**.", FREE) == "12"
    assert extract_answer("mathverse", "nothing here", FREE) is None
    assert extract_answer("wemath", "<Answer>: B", WEMATH) == "B"
    assert extract_answer("mmmu_pro_v", "x\nAnswer: $B", SIX) == "B"
    assert value_of("2\\pi") == pytest.approx(6.283185, rel=1e-6)
    assert value_of("50\\%") == 50.0 and value_of("3 cm") == 3.0 and value_of("red") is None
    assert value_of("seven") is None and value_of("\\sqrt{2}") == pytest.approx(2 ** 0.5)
    assert letters_of("(A) and (C)") == {"A", "C"} and letters_of("cab") is None
    assert infer_option("I pick B", ["x", "y"]) == "B" and infer_option("x or y", ["x", "y"]) is None
    assert mathvista_normalized("\\frac{8}{11}", VISTA_MC) == "8/11"


def _wemath(problem, key, correct):
    return {"wemath_id": problem, "wemath_key": key, "correct": correct, "group": key[:6]}


def test_wemath_s1_s2_s3_and_four_dimensions_over_the_official_denominators():
    # p1 all right (CM); p2 subs right, multi wrong (IG); p3 one sub wrong, multi right
    # (RM strict, CM loose); p4 (3 steps) all subs wrong, multi right (RM both); p5 sub wrong
    # and multi wrong (IK); p6 lacks its multi row (counts in S1 only).
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
    ]
    dims = wemath_dimensions(records)
    assert dims["problems"] == 5
    assert (dims["IK"], dims["IG"], dims["CM_strict"], dims["RM_strict"]) == (1, 1, 1, 2)
    assert (dims["CM_loose"], dims["RM_loose"]) == (2, 1)
    assert dims["S1"] == pytest.approx(100 * 7 / 12)  # sub-problems right / sub-problems
    assert dims["S2"] == pytest.approx(100 * 2 / 4) and dims["S3"] == pytest.approx(100.0)
    assert WEMATH_PROBLEMS == 525
    assert dims["score_strict"] == pytest.approx(100 * (525 - 0.5 - 2 - 1) / 525)
    assert dims["score_loose"] == pytest.approx(100 * (525 - 0.5 - 1 - 1) / 525)
    assert wemath_dimensions(records, denominator=5)["score_strict"] == pytest.approx(30.0)
    summary = summarise("wemath", "four-dimensional Score (Strict)", records)
    assert summary.score == dims["score_strict"]


def test_wemath_without_a_multi_step_problem_falls_back_to_accuracy_and_says_so():
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


def test_mathverse_every_problem_version_mmstar_l2_and_logicvista_skills():
    records = [{"group": v, "correct": c} for v, c in [
        ("Vision Only", True), ("Vision Only", False), ("Text Dominant", True)]]
    summary = summarise("mathverse", "accuracy", records)
    assert summary.groups == {"Text Dominant": (1, 100.0), "Vision Only": (2, 50.0)}
    assert summary.score == summary.accuracy == pytest.approx(200 / 3)
    assert summary.metric == "accuracy over 2 problem version(s): Text Dominant, Vision Only"
    star = summarise("mmstar", "accuracy", [{"group": "math", "l2": "numeric", "correct": True},
                                            {"group": "math", "l2": "geometry", "correct": False}])
    assert star.more_groups["l2"] == {"geometry": (1, 0.0), "numeric": (1, 100.0)}
    logic = summarise("logicvista", "accuracy", [{"group": ["spatial", "inductive"],
                                                  "correct": True},
                                                 {"group": ["inductive"], "correct": False}])
    assert logic.groups == {"inductive": (2, 50.0), "spatial": (1, 100.0)}
