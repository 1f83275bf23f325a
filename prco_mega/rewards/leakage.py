"""Leakage checks leak(q, c) in {0, 1}: does an Observer caption give away the answer?

Rule adopted by both checkers: a caption leaks when it states the answer *as an answer or as
the conclusion of the reasoning the question asks for*, or carries an answer marker. Reporting
values read from the image is the Observer's job and is not leakage, even when such a value
happens to equal the gold answer ("there are 3 red circles" when the answer is 3): otherwise a
good caption of a one-step question could never be rewarded, and the rule checker could not
tell a perceived fact from a computed result anyway. The LLM judge gets the same instruction.

Cost: the rule checker reads at most `MAX_CAPTION_CHARS` of a caption with linear regular
expressions, parses the gold once per call (a gold over `MAX_GOLD_CHARS` is reported with a
`GoldTooLongWarning` and only boxes and answer markers are checked), and compares each distinct
number or option token once with the gold, each comparison within the verifier's step budget.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Protocol

from prco_mega.rewards.compare import assigned_value
from prco_mega.rewards.mathparse import Quantity, Relation, Text
from prco_mega.rewards.mathvalue import free_vars
from prco_mega.rewards.verifier import MAX_ANSWER_CHARS, GoldAnswer, canonical_text

MAX_CAPTION_CHARS = 16384
"""Captions are <= ~1k tokens; a longer caption is checked on its head."""
MAX_GOLD_CHARS = MAX_ANSWER_CHARS
"""A longer gold is not parsed: no answer that long can be stated in a caption token."""
_MAX_VERDICT_CHARS = 2000


class GoldTooLongWarning(UserWarning):
    """A gold answer over `MAX_GOLD_CHARS`: the rule checker only looked for boxes and markers."""


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
_NUMERAL = re.compile(r"([-+]?)(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
                      r"(?:\s*/\s*(\d+(?:\.\d+)?))?(\s*\\?%)?", re.ASCII)
_FRAC_NUMERAL = re.compile(r"\\[dt]?frac\{()(\d+)\}\{(\d+)\}()", re.ASCII)
_ARITHMETIC = re.compile(r"\d\s*[-+*/×÷xX]\s*\(?\d|\\times|\\cdot|\\div|\\frac")


class _Gold:
    """The gold parsed once per `rule_leak` call, with a verdict cache per distinct token."""

    def __init__(self, gold: str):
        self.answer = GoldAnswer(gold)
        item = self.answer.item
        value = assigned_value(item) if isinstance(item, Relation) else item
        # Only a variable-free value can equal a number token; only a letter gold a letter.
        self.takes_numbers = isinstance(value, Quantity) and not free_vars(value.expr)
        self.text = canonical_text(gold)
        self.is_text = isinstance(item, Text) and len(self.text) >= 3
        self.verdicts: dict[str, bool] = {}

    def equals(self, token: str) -> bool:
        verdict = self.verdicts.get(token)
        if verdict is None:
            numeral = _numeral(token)
            verdict = self.answer.matches(token) if numeral is None else \
                self.answer.matches_item(numeral)
            self.verdicts[token] = verdict
        return verdict


def _numeral(token: str) -> Quantity | None:
    """A plain numeral token (`12`, `-3.5`, `1,000`, `3/4`, `50%`, `\\frac{1}{2}`) as the parser
    would read it, built without tokenizing: most caption tokens are such numerals, and this
    keeps a 16 kB caption of them cheap."""
    m = _NUMERAL.fullmatch(token) or _FRAC_NUMERAL.fullmatch(token)
    if m is None:
        return None
    node = ("num", Fraction(m[2].replace(",", "")), m[2])
    if m[3] is not None:
        den = Fraction(m[3])
        if not den:
            return None
        node = ("div", node, ("num", den, m[3]))
    return Quantity(("neg", node) if m[1] == "-" else node, percent=bool(m[4]))


def _states_gold(text: str, gold: _Gold) -> bool:
    """Whether `text` (part of one statement) states the gold: a number, option letter or word."""
    if gold.takes_numbers and any(gold.equals(m[0]) for m in _NUMBER_TOKEN.finditer(text)):
        return True
    if gold.answer.letters is not None and any(
            gold.equals(m[1] or m[2]) for m in _LETTER_TOKEN.finditer(text)):
        return True
    return gold.is_text and gold.text in canonical_text(text)


def _concludes_gold(statement: str, gold: _Gold) -> bool:
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


def _computes_gold(statement: str, gold: _Gold) -> bool:
    """Whether the statement contains `<arithmetic> = <gold>` (a computed result)."""
    if not gold.takes_numbers or "=" not in statement:
        return False
    parts = statement.split("=")
    for lhs, rhs in zip(parts, parts[1:]):
        first = _NUMBER_TOKEN.search(rhs)
        if first is not None and _ARITHMETIC.search(lhs) and gold.equals(first[0]):
            return True
    return False


def rule_leak(caption: str, gold: str) -> int:
    """1 when the caption has a box or an answer marker, or concludes with the gold (module doc).

    Conclusions: after a leading cue ("therefore", "so the", "the sum is", ...) the rest of the
    statement states the gold, or the clause before a trailing cue ("in total", "altogether")
    does, or an arithmetic expression ends in `= <gold>`. Answer markers
    ("the answer is", "answer:", "final answer", "correct option") leak whatever value follows:
    stating an answer is the behaviour the Observer must not learn.

    Worst-case cost: linear regular expressions over at most `MAX_CAPTION_CHARS` characters
    (statements are split once; each cue search starts a statement), one parse of a gold of at
    most `MAX_GOLD_CHARS`, and one verifier comparison per distinct number or letter token after
    a cue (at most one per two caption characters), each within the verifier's `BUDGET_STEPS`.
    A longer gold is not parsed: a `GoldTooLongWarning` reports it and only boxes and answer
    markers count.
    """
    caption = caption[:MAX_CAPTION_CHARS]
    if _BOX.search(caption) or _ANSWER_MARKER.search(caption):
        return 1
    if len(gold) > MAX_GOLD_CHARS:
        warnings.warn(f"gold answer of {len(gold)} characters is over the rule leakage checker's "
                      f"cap of {MAX_GOLD_CHARS}: only boxes and answer markers were checked",
                      GoldTooLongWarning, stacklevel=2)
        return 0
    parsed = _Gold(gold)
    for statement in _STATEMENT_END.split(caption):
        if _concludes_gold(statement, parsed) or _computes_gold(statement, parsed):
            return 1
    return 0


@dataclass
class RuleStats:
    """Running counts of a `RuleLeakageChecker` (for metrics)."""

    checked: int = 0
    leaks: int = 0
    golds_over_cap: int = 0
    """Golds over `MAX_GOLD_CHARS`: checked for boxes and answer markers only."""


class RuleLeakageChecker:
    """The cheap rule-based `LeakageChecker` (see `rule_leak`); the question is not needed.

    Cost: `rule_leak` per caption. Golds over `MAX_GOLD_CHARS` are counted in
    `stats.golds_over_cap` (and warned about once per call site by `rule_leak`).
    """

    def __init__(self):
        self.stats = RuleStats()

    def __call__(self, questions: list[str], captions: list[str], answers: list[str]) -> list[int]:
        _check_lengths(questions, captions, answers)
        leaks = [rule_leak(c, a) for c, a in zip(captions, answers)]
        self.stats.checked += len(leaks)
        self.stats.leaks += sum(leaks)
        self.stats.golds_over_cap += sum(len(a) > MAX_GOLD_CHARS for a in answers)
        return leaks


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
    Cost: linear in the length of the template plus the values substituted.
    """
    values = {"question": question, "caption": caption, "answer": answer}
    return _PLACEHOLDER.sub(lambda m: values[m[1]], template)


def parse_verdict(text: str) -> int | None:
    """1 for YES (leaks), 0 for NO, None when the judge's reply has no clear verdict.

    Reads the text after the last `</think>`; the last `VERDICT: YES/NO` wins; without one, a
    reply whose first word is yes/no, or in which only one of the words yes/no occurs, counts.
    Cost: one linear split of the reply, then regular expressions over at most
    `_MAX_VERDICT_CHARS` characters.
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
    Cost: one `render_judge_prompt` and one `parse_verdict` per caption, plus one `generate_fn`
    call for the batch (the judge model's generation dominates).
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
