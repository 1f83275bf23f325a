"""Scoring of the eight benchmarks as their official scripts score, quirks included.

Each benchmark has an extraction (`extract_answer`) and a rule (`item_correct`). Extraction takes
the last `\\boxed{}` (the role templates ask for one); without a box, the benchmark's own answer
formats, as its script reads them (WeMath `<Answer>: X`, MMMU-Pro's `Answer: X` line, a bare
option letter where VLMEvalKit's `can_infer` accepts one, DynaMath's JSON `short answer`), then
`answer is X` / `Answer: X`. The rules follow the scripts the paper scored with (VLMEvalKit, the
authors' fork of its MathVision file) or, where VLMEvalKit defers to its GPT judge, the
benchmark's own script; a step that asks a GPT judge is replaced by the project's verifier and
says so. The source of each rule is named in a comment beside it. The project's verifier is also
available as a second column (`verifier_correct`, `--also-verifier`), never the headline.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from prco_mega.eval.benchmarks.rows import LETTERS
from prco_mega.rewards.mathlex import Budget, BudgetExceeded
from prco_mega.rewards.mathparse import Quantity, parse_answer
from prco_mega.rewards.mathvalue import Invalid, free_vars, numeric
from prco_mega.rewards.verifier import (
    BUDGET_STEPS,
    MAX_ANSWER_CHARS,
    answers_match,
    extract_boxed,
    verify,
)

_ANSWER_IS = re.compile(r"(?:answer is|answer:)\s*\**\s*([^\n]{1,80})", re.IGNORECASE)
_PUNCT = str.maketrans({c: " " for c in ".()[],:;!*#{}"})
_VERBOSE = re.compile(r"(?:correct\s+)?answer\s+is\s+\**([ABCD])\**", re.IGNORECASE)
_PAREN_LETTER = re.compile(r"\(([a-zA-Z])\)")
_VISTA_QUOTED = re.compile(r'The answer is "(.*)"\.')
DYNAMATH_TOL = 1e-3
MATHVISION_TOL = 1e-6


# ---------------------------------------------------------------------------------- helpers


def value_of(answer: str, need_digit: bool = True) -> float | None:
    """The number an answer states, read by the verifier's parser (LaTeX, fractions, roots, pi;
    a unit or percent mark is ignored), or None. Stand-in for the float conversion a GPT
    extraction makes possible; with `need_digit` an answer without a digit (`seven`, `\\pi`) has
    none, as the scripts' `float()` has none."""
    if len(answer) > MAX_ANSWER_CHARS or (need_digit and not re.search(r"\d", answer)):
        return None
    try:
        budget = Budget(BUDGET_STEPS)
        item = parse_answer(answer, budget)
        if not isinstance(item, Quantity) or free_vars(item.expr):
            return None
        value = numeric(item.expr, {}, budget)
    except (BudgetExceeded, Invalid):
        return None
    return value if math.isfinite(value) else None


def infer_option(answer: str, options: list[str] | None) -> str | None:
    """VLMEvalKit's `can_infer` (vlmeval/utils/matching_util.py): one option letter among the
    answer's words (punctuation as spaces), within its last five words; else `answer is X`;
    else the one option whose text the answer contains (when not twice the options' length)."""
    letters = LETTERS[:len(options)] if options else LETTERS[:5]
    words = answer.translate(_PUNCT).split()
    named = [c for c in letters if c in words]
    if len(named) == 1 and words.index(named[0]) > len(words) - 5:
        return named[0]
    verbose = _VERBOSE.search(answer)
    if verbose and verbose[1].upper() in letters:
        return verbose[1].upper()
    if options and len(answer) <= 2 * sum(len(o) for o in options):
        hits = [letters[i] for i, o in enumerate(options) if o.lower() in answer.lower()]
        if len(hits) == 1:
            return hits[0]
    return None


def levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


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


# ---------------------------------------------------------------------------------- extraction


def _answer_is(response: str) -> str | None:
    found = _ANSWER_IS.findall(response[-2000:])
    return found[-1].strip().rstrip(".").strip("*").strip() if found else None


def _wemath_letter(response: str) -> str | None:
    # WeMath (VLMEvalKit vlmeval/dataset/utils/wemath.py load_and_process_data, as the
    # authors' four_dimensional_metrics.py): the text after the last "Answer", without
    # `<>:.`, must start with a letter A-H. Quirk: without "Answer" the whole response is
    # read, so a response that starts "Because ..." is read as B.
    tail = re.sub(r"[><:.]", "", response.split("Answer")[-1].strip()).strip()
    return tail[0] if tail and tail[0] in "ABCDEFGH" else None


def _mmmu_pro_line(response: str) -> str | None:
    # MMMU-Pro (VLMEvalKit vlmeval/dataset/image_mcq.py MMMUProDataset.cot_postproc): the last
    # line that starts "Answer:"; one capital letter in its tail is the answer.
    lines = [x.strip() for x in response.strip().split("\n") if x.strip().startswith("Answer:")]
    if not lines:
        return None
    capitals = {c for c in lines[-1][len("Answer:"):] if c.isupper()}
    return capitals.pop() if len(capitals) == 1 else lines[-1][len("Answer:"):].strip()


def _dynamath_short(response: str) -> str | None:
    # DynaMath (VLMEvalKit vlmeval/dataset/dynamath.py preprocess, DynaMath_auxeval): the
    # prompt asks for JSON {"solution", "short answer"}; the text between the first `{` and
    # the last `}`, backslashes removed, is parsed.
    start, end = response.find("{"), response.rfind("}")
    if not 0 <= start < end:
        return None
    try:
        short = json.loads(response[start:end + 1].replace("\\", ""), strict=False)
    except json.JSONDecodeError:
        return None
    value = short.get("short answer") if isinstance(short, dict) else None
    return None if value is None else str(value)


def extract_answer(benchmark: str, response: str, meta: Mapping[str, Any]) -> str | None:
    """The answer a response gives, as the benchmark reads it (module doc)."""
    boxed = extract_boxed(response)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    options = meta.get("options")
    if benchmark == "wemath":
        return _wemath_letter(response)
    if benchmark == "mmmu_pro_v":
        return _mmmu_pro_line(response) or infer_option(response, options) or _answer_is(
            response)
    if benchmark == "mmstar" or (benchmark == "mathvision" and meta.get("kind") == "choice"):
        # VLMEvalKit's ImageMCQDataset and the PRCO fork of vlmeval/dataset/utils/mathv.py
        # (post_check, prefetch) try can_infer on the whole response first
        return infer_option(response, options) or _answer_is(response)
    if benchmark == "dynamath":
        return _dynamath_short(response) or _answer_is(response)
    if benchmark == "mathvista":
        # MathVista evaluation/extract_answer.py quick extraction: `The answer is "x".`
        quoted = _VISTA_QUOTED.search(response)
        return quoted[1] if quoted else _answer_is(response)
    return _answer_is(response)


# ---------------------------------------------------------------------------------- the rules


def _choice_by_judge(extracted: str, gold: str, meta: Mapping[str, Any]) -> bool:
    """Where the script asks its GPT judge: the verifier's option matching (letter, or an
    answer equal to one option's text)."""
    return answers_match(extracted, gold, meta.get("options"))


def _mathverse(extracted: str, gold: str, meta: Mapping[str, Any]) -> bool:
    # MathVerse (VLMEvalKit vlmeval/dataset/utils/mathverse.py post_check_score; MathVerse's
    # evaluation/score_answer_s2.py quick_match): the extraction equal to the answer is right;
    # anything else goes to the GPT judge ("0.5m and 50cm" consistent): the verifier here.
    if extracted.strip() == gold.strip():
        return True
    return _choice_by_judge(extracted, gold, meta)


def _mathvision(extracted: str, gold: str, meta: Mapping[str, Any]) -> bool:
    # MathVision (the PRCO authors' VLMEvalKit vlmeval/dataset/utils/mathv.py post_check and
    # is_equal): a choice is can_infer's letter; a value is right when equal lower-cased, or
    # both evaluate to numbers within 1e-6 (latex2sympy there, the verifier's parser here).
    if meta.get("kind") == "choice":
        return infer_option(extracted, meta.get("options")) == gold
    if extracted.lower().strip() == gold.lower().strip():
        return True
    pred, want = value_of(extracted), value_of(gold)
    return pred is not None and want is not None and abs(pred - want) < MATHVISION_TOL


def mathvista_normalized(extracted: str, meta: Mapping[str, Any]) -> str | None:
    """MathVista's evaluation/calculate_score.py normalize_extracted_answer."""
    options = meta.get("options") or []
    if meta.get("question_type") == "multi_choice" or meta.get("kind") == "choice":
        # "(B) text" -> "B"; a letter -> its choice; anything else -> the choice at the least
        # Levenshtein distance. Quirk: every text maps to some choice, an empty one to the
        # shortest.
        letter = _PAREN_LETTER.findall(extracted)
        text = letter[0].upper() if letter else extracted.strip()
        if text in tuple(LETTERS[:len(options)]):
            return options[LETTERS.index(text)]
        return min(options, key=lambda o: levenshtein(text, o)) if options else None
    value = value_of(extracted)  # float() of a GPT extraction; `seven` has none
    if meta.get("answer_type") == "integer":
        return None if value is None else str(int(value))
    if meta.get("answer_type") == "float":
        return None if value is None else str(round(value, int(float(meta.get("precision") or 0))))
    return extracted.strip()  # list and text: str(extraction), compared as a string


def _mathvista(extracted: str, gold: str, meta: Mapping[str, Any]) -> bool:
    # MathVista (evaluation/calculate_score.py safe_equal): the normalised prediction equals
    # the answer string. Quirks: gold "1.50" never equals str(round(x, 2)); lists compare as
    # strings, so "[2007,2008]" is not "[2007, 2008]".
    options = meta.get("options") or []
    want = options[LETTERS.index(gold)] if meta.get("kind") == "choice" and options else gold
    return mathvista_normalized(extracted, meta) == want


def _wemath(extracted: str, gold: str, meta: Mapping[str, Any]) -> bool:
    # WeMath (VLMEvalKit vlmeval/dataset/utils/wemath.py): the letter must equal the answer;
    # VLMEvalKit's judge path (mcq_vanilla_eval) also maps an option's text to its letter.
    if extracted.strip()[:1] in "ABCDEFGH" and len(extracted.strip()) == 1:
        return extracted.strip() == gold
    return infer_option(extracted, meta.get("options")) == gold or _choice_by_judge(
        extracted, gold, meta)


def _dynamath_float(text: str) -> float | None:
    # DynaMath (VLMEvalKit vlmeval/dataset/dynamath.py parse_answer, transfer): the first
    # space-separated word as a float, "π" multiplying ("2π"; "π" alone does not parse);
    # the GPT re-extraction after a failed parse: the verifier's parser here.
    word = text.split(" ")[0]
    try:
        if "π" in word:
            return float(word.split("π")[0]) * math.pi
        return float(word)
    except ValueError:
        return value_of(text, need_digit=False)


def _dynamath_letter(text: str) -> str | None:
    # DynaMath parse_answer: one character is the letter; else exactly one of A-E in the upper
    # cased text. Quirk: "The answer is C" holds E and C, so it does not parse.
    if len(text) == 1:
        return text.upper()
    found = [c for c in "ABCDE" if c in text.upper()]
    return found[0] if len(found) == 1 else None


def _dynamath(extracted: str, gold: str, meta: Mapping[str, Any], response: str) -> bool:
    # DynaMath (VLMEvalKit vlmeval/dataset/dynamath.py DynaMath_auxeval)
    if meta.get("answer_type") == "float":
        pred, want = _dynamath_float(extracted), value_of(gold)
        return pred is not None and want is not None and abs(pred - want) <= DYNAMATH_TOL
    if meta.get("kind") == "choice":
        letter = _dynamath_letter(extracted)
        # Quirk: an answer that does not parse is right when the gold letter is among the
        # response's first three characters.
        return letter == gold if letter else gold in response[:3].upper()
    return extracted.lower() in gold.lower()  # text: contained in the gold (quirk: "" is)


def _logicvista(extracted: str, gold: str, meta: Mapping[str, Any]) -> bool:
    # LogicVista (VLMEvalKit vlmeval/dataset/utils/logicvista.py LogicVista_auxeval): the GPT
    # judge names the chosen letters (the verifier's letter and option-text matching here);
    # they must be capital letters, and sorted they must equal the answer split at ", ".
    # Quirk: a digit answer ("Select from 1-5") can never be matched.
    named = letters_of(extracted)
    if named is None and meta.get("options"):
        named = {c for c in LETTERS[:len(meta["options"])]
                 if answers_match(extracted, c, meta["options"])} or None
    if not named:
        return False
    return sorted(c.lower() for c in named) == sorted(g.lower() for g in gold.split(", "))


def _multiple_choice(extracted: str, gold: str, meta: Mapping[str, Any]) -> bool:
    # MMStar and MMMU-Pro (VLMEvalKit vlmeval/dataset/image_mcq.py evaluate ->
    # utils/multiple_choice.py mcq_vanilla_eval): can_infer's letter, else the GPT judge.
    return infer_option(extracted, meta.get("options")) == gold or _choice_by_judge(
        extracted, gold, meta)


def item_correct(benchmark: str, extracted: str | None, gold: str, meta: Mapping[str, Any],
                 response: str = "") -> bool:
    """Whether an extracted answer is right under `benchmark`'s rule (module doc)."""
    if benchmark == "mathvista" and meta.get("kind") == "choice":
        return _mathvista(extracted or "", gold, meta)  # an empty extraction still maps
    if extracted is None or not extracted.strip():
        return benchmark == "dynamath" and meta.get("kind") == "choice" and gold in \
            response[:3].upper()
    rules = {"mathverse": _mathverse, "mathvision": _mathvision, "mathvista": _mathvista,
             "wemath": _wemath, "logicvista": _logicvista, "mmmu_pro_v": _multiple_choice,
             "mmstar": _multiple_choice}
    if benchmark == "dynamath":
        return _dynamath(extracted, gold, meta, response)
    return rules.get(benchmark, _mathverse)(extracted, gold, meta)


def verifier_correct(response: str, gold: str, meta: Mapping[str, Any]) -> bool:
    """The project's own verifier on the response (the RL reward's verdict): the second column."""
    return verify(response, gold, meta.get("options")) == 1.0
