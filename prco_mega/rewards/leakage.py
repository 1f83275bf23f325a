"""Leakage checks leak(q, c) in {0, 1}: does an Observer caption give away the answer?

Rule adopted by both checkers: a caption leaks when it states the answer *as an answer or as
the conclusion of the reasoning the question asks for*, or carries an answer marker. Reporting
values read from the image is the Observer's job and is not leakage, even when such a value
happens to equal the gold answer ("there are 3 red circles" when the answer is 3): otherwise a
good caption of a one-step question could never be rewarded, and the rule checker could not
tell a perceived fact from a computed result anyway. The LLM judge gets the same instruction.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Protocol

from prco_mega.rewards.verifier import answers_match, canonical_text, parse_number

_MAX_CAPTION_CHARS = 16384  # captions are <= ~1k tokens; longer text is checked on its head
_MAX_VERDICT_CHARS = 2000


class LeakageChecker(Protocol):
    """Maps a batch of (question, caption, gold answer) to leak flags, 1 = the caption leaks."""

    def __call__(self, questions: list[str], captions: list[str], answers: list[str]) -> list[int]:
        ...


def _check_lengths(questions: list[str], captions: list[str], answers: list[str]) -> None:
    if not len(questions) == len(captions) == len(answers):
        raise ValueError(
            f"questions ({len(questions)}), captions ({len(captions)}) and answers "
            f"({len(answers)}) must have the same length")


# ------------------------------------------------------------------------------- rule checker

_BOX = re.compile(r"\\(?:boxed|fbox)\b")
_ANSWER_MARKER = re.compile(
    r"\b(?:final\s+answer|correct\s+(?:answer|option|choice)|answer\s+is|solution\s+is)\b"
    r"|\banswer\s*[:=]", re.IGNORECASE)
# A leading cue precedes its conclusion ("therefore 7"); a trailing one follows it ("7 in total").
# "total" alone is no cue (a bar labelled "Total" holds a read fact); "the total of/is" is.
_LEADING_CUE = re.compile(
    r"\b(?:therefore|thus|hence|consequently|so\s+the|so\s+there|so\s+it|which\s+gives"
    r"|which\s+means|this\s+gives|that\s+gives|giving|adds\s+up\s+to|sums?\s+to|the\s+result"
    r"|the\s+(?:sum|total|difference|product|ratio|quotient)\s+"
    r"(?:is|of|number|count|amount|value|between|comes))\b", re.IGNORECASE)
_TRAILING_CUE = re.compile(r"\b(?:in\s+total|altogether|combined|overall)\b", re.IGNORECASE)
_CLAUSE_BREAK = re.compile(r"[,:;]|\band\b", re.IGNORECASE)
_STATEMENT_END = re.compile(r"\n|[.;!?](?=\s|$)")
_NUMBER_TOKEN = re.compile(
    r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?(?:\s*\\?%)?"
    r"|\\[dt]?frac\{[^{}]*\}\{[^{}]*\}")
_LETTER_TOKEN = re.compile(r"\(([A-Z])\)|\b(?:option|choice)\s+\(?([A-Z])\b", re.IGNORECASE)
_ARITHMETIC = re.compile(r"\d\s*[-+*/×÷xX]\s*\(?\d|\\times|\\cdot|\\div|\\frac")


def _states_gold(text: str, gold: str) -> bool:
    """Whether `text` (part of one statement) states the gold: a number, option letter or word."""
    for m in _NUMBER_TOKEN.finditer(text):
        if answers_match(m[0], gold):
            return True
    for m in _LETTER_TOKEN.finditer(text):
        if answers_match(m[1] or m[2], gold):
            return True
    gold_text = canonical_text(gold)
    is_text_answer = parse_number(gold) is None and len(gold_text) >= 3
    return is_text_answer and gold_text in canonical_text(text)


def _concludes_gold(statement: str, gold: str) -> bool:
    """Whether the statement concludes with the gold: after its first leading cue, or in the
    clause just before a trailing cue ("..., 7 shapes in total")."""
    lead = _LEADING_CUE.search(statement)
    if lead is not None and _states_gold(statement[lead.end():], gold):
        return True
    trail = _TRAILING_CUE.search(statement)
    if trail is None:
        return False
    clause_start = max((m.end() for m in _CLAUSE_BREAK.finditer(statement, 0, trail.start())),
                       default=0)
    return _states_gold(statement[clause_start:trail.start()], gold)


def _computes_gold(statement: str, gold: str) -> bool:
    """Whether the statement contains `<arithmetic> = <gold>` (a computed result)."""
    parts = statement.split("=")
    for lhs, rhs in zip(parts, parts[1:]):
        first = _NUMBER_TOKEN.search(rhs)
        if _ARITHMETIC.search(lhs) and first is not None and answers_match(first[0], gold):
            return True
    return False


def rule_leak(caption: str, gold: str) -> int:
    """1 when the caption has a box or an answer marker, or concludes with the gold (module doc).

    Conclusions: after a leading cue ("therefore", "so the", "the sum is", ...) the rest of the
    statement states the gold, or the clause before a trailing cue ("in total", "altogether")
    does, or an arithmetic expression ends in `= <gold>`. Answer markers
    ("the answer is", "answer:", "final answer", "correct option") leak whatever value follows:
    stating an answer is the behaviour the Observer must not learn.
    """
    caption = caption[:_MAX_CAPTION_CHARS]
    if _BOX.search(caption) or _ANSWER_MARKER.search(caption):
        return 1
    for statement in _STATEMENT_END.split(caption):
        if _concludes_gold(statement, gold) or _computes_gold(statement, gold):
            return 1
    return 0


class RuleLeakageChecker:
    """The cheap rule-based `LeakageChecker` (see `rule_leak`); the question is not needed."""

    def __call__(self, questions: list[str], captions: list[str], answers: list[str]) -> list[int]:
        _check_lengths(questions, captions, answers)
        return [rule_leak(c, a) for c, a in zip(captions, answers)]


# ---------------------------------------------------------------------------------- LLM judge

DEFAULT_JUDGE_TEMPLATE = """\
You check descriptions of images. A student will answer a question using only a description \
of an image. The description should report what is visible and relevant (objects, values, \
labels, counts, relations) and must not give away the answer.

Question: {question}
Correct answer: {answer}

Description:
<<<
{caption}
>>>

Does the description give away the answer? It does if it states the answer to the question, \
states the result of the calculation or reasoning the question asks for, names the correct \
option, or contains a boxed or otherwise marked final answer. Reporting values read from the \
image does not count, even when the answer could be worked out from them.

End your reply with exactly one line: VERDICT: YES (it gives the answer away) or VERDICT: NO."""

_PLACEHOLDER = re.compile(r"\{(question|caption|answer)\}")
_VERDICT = re.compile(r"verdict\W{0,8}(yes|no)\b", re.IGNORECASE)
_YES_NO_WORD = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def render_judge_prompt(template: str, question: str, caption: str, answer: str) -> str:
    """The template with `{question}`, `{caption}`, `{answer}` filled in one pass.

    One regex pass (not `str.format`): captions contain braces, and a value must never be
    re-substituted (a caption that writes `{answer}` must not receive the gold answer).
    """
    values = {"question": question, "caption": caption, "answer": answer}
    return _PLACEHOLDER.sub(lambda m: values[m[1]], template)


def parse_verdict(text: str) -> int | None:
    """1 for YES (leaks), 0 for NO, None when the judge's reply has no clear verdict.

    Reads the text after the last `</think>`; the last `VERDICT: YES/NO` wins; without one, a
    reply whose first word is yes/no, or in which only one of the words yes/no occurs, counts.
    """
    text = text.rsplit("</think>", 1)[-1][-_MAX_VERDICT_CHARS:]
    verdicts = _VERDICT.findall(text)
    if verdicts:
        return int(verdicts[-1].lower() == "yes")
    first_word = text.strip().lstrip("*#>-` ").split(maxsplit=1)[:1]
    if first_word and first_word[0].strip(".,:;!*").lower() in ("yes", "no"):
        return int(first_word[0].strip(".,:;!*").lower() == "yes")
    words = {w.lower() for w in _YES_NO_WORD.findall(text)}
    return int(words == {"yes"}) if len(words) == 1 else None


@dataclass
class JudgeStats:
    """Running counts of an `LLMJudgeLeakageChecker` (for metrics)."""

    judged: int = 0
    """Captions sent to the judge."""
    leaks: int = 0
    """Captions flagged as leaking (including unparseable ones when those count as leaks)."""
    unparseable: int = 0
    """Judge replies without a clear YES/NO verdict."""


class LLMJudgeLeakageChecker:
    """`LeakageChecker` asking an LLM (greedy generation of a rollout engine) for a verdict.

    `generate_fn(prompts) -> replies` is supplied by the rollout layer. An unparseable reply counts
    as a leak by default (`unparseable_is_leak=True`): a false leak only withholds one caption's
    reward, while a false pass could reward a caption that games the judge into garbage output;
    `stats.unparseable` shows when a judge model does not follow the format.
    """

    def __init__(self, generate_fn: Callable[[list[str]], list[str]],
                 template: str = DEFAULT_JUDGE_TEMPLATE, unparseable_is_leak: bool = True):
        if "{caption}" not in template:
            raise ValueError(f"judge template must contain '{{caption}}'; got {template[:80]!r}")
        self.generate_fn = generate_fn
        self.template = template
        self.unparseable_is_leak = unparseable_is_leak
        self.stats = JudgeStats()

    def __call__(self, questions: list[str], captions: list[str], answers: list[str]) -> list[int]:
        _check_lengths(questions, captions, answers)
        prompts = [render_judge_prompt(self.template, q, c, a)
                   for q, c, a in zip(questions, captions, answers)]
        replies = self.generate_fn(prompts)
        if len(replies) != len(prompts):
            raise ValueError(
                f"generate_fn returned {len(replies)} replies for {len(prompts)} prompts")
        leaks = []
        for reply in replies:
            verdict = parse_verdict(reply)
            if verdict is None:
                self.stats.unparseable += 1
                verdict = int(self.unparseable_is_leak)
            leaks.append(verdict)
        self.stats.judged += len(prompts)
        self.stats.leaks += sum(leaks)
        return leaks
