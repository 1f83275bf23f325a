"""The answer verifier V(y, a) in {0, 1}: the last `\\boxed{...}` of a response against the gold.

It is the RL reward, so a false "equal" is a reward-hacking surface and the rules below prefer
"not equal" whenever they cannot show equality. Model text is never evaluated as code: answers go
through our own lexer and recursive-descent parser (`mathlex`, `mathparse`; why not a library is
said there) into plain tuples that `mathvalue` evaluates with a fixed table of functions.

Bounded work: only the last `RESPONSE_WINDOW` characters of a response are searched for the
box, answers and golds longer than `MAX_ANSWER_CHARS` never match, and every call has a hard
budget of `BUDGET_STEPS` steps (tokens, parse nodes, arithmetic steps, sample points), counted,
not timed. When the budget runs out the answer is "not equal".

Rules (the gold and the answer are read the same way, and every rule is symmetric):
- Box: the content of the last `\\boxed{...}` / `\\fbox{...}` whose braces balance (the one that
  closes last). No box, an empty box: 0.
- Same text: answers equal after case-folding and removing whitespace are equal. Braces are
  kept, so `\\sqrt{2+1}` is not `\\sqrt2+1` and `2^{x+1}` is not `2^x+1`.
- Numbers in every spelling: `1,000` / `1{,}000` / `1\\,000`, `.5`, `1.5e3`, `1.5\\times10^3`,
  `\\frac`/`\\dfrac`/`\\tfrac`/`\\dfrac12`, mixed numbers `1\\frac{1}{2}` and `2 1/2`, `1/2`,
  number words alone (`three`, `twenty-one`), Unicode (`½`, `√2`, `x²`, `×`, `÷`, `−`,
  fullwidth and other scripts' digits). A lead-in such as `The value is` is dropped.
- Exact equality where possible: rationals, and sums of rational multiples of products of pi,
  e and square roots, in canonical form (`\\sqrt{12}` = `2\\sqrt{3}`, `\\pi/2` = `\\frac{\\pi}{2}`,
  `\\frac{1}{\\sqrt2}` = `\\frac{\\sqrt2}{2}`). Otherwise floating point to relative 1e-9
  (`\\sin(\\pi/6)` = `1/2`, `\\log_2 8` = `3`), and expressions with variables at 8 fixed points
  (`2(x+1)` = `2x+2`; implicit products, `^`, functions; both sides defined at the same points).
- Decimals (rounding rule): two decimals are equal only when they are the same number
  (`3.14` != `3.15`, `0.33` != `0.333`). A decimal with d places and at least two significant
  digits equals an exact value that rounds to it, when d >= 2, or d >= 1 and the exact value is
  irrational: `1.41` = `\\sqrt2`, `7.9` = `\\frac{5\\pi}{2}`, `0.33` = `1/3`, `0.333` = `1/3`;
  but `0.3` != `1/3` and `3` != `\\pi`.
- Percent: `50\\%` / `50 percent` is 50 with a percent mark. With a mark on one side only, the
  other side may give the value either way (gold `50%` accepts `50` and `0.5`); with marks on
  both sides the numbers must agree.
- Units are part of the value. A unit has a dimension (length, area, volume, angle, time, mass,
  speed, each currency) and a scale: `50 cm` = `0.5 m` = `500 mm`, `90 min` = `1.5 h`, `180°` =
  `\\pi rad`; `5 m` != `5 cm`, `5 cm` != `5 cm^2`, `\\$5` != `5 yuan`. Policy for a bare number
  against a number with a unit: the bare number is read in the other side's unit, so gold
  `5 cm` accepts `5` and gold `5` accepts `5 cm`, but gold `5 cm` never accepts `0.05` (that
  would be `0.05 cm`). Against an angle, a bare value written with pi is read in radians
  (`\\frac{\\pi}{6}` = `30^\\circ`). Trailing count nouns are not units (`5 apples` is `5`).
- Relations (`=`, `<`, `>`, `\\le`, `\\ge`, `\\ne`, `\\in`) are never reduced to one side:
  `x^2=5` != `5`, `y = 2x+1` != `2x+1`. Two relations are equal side by side or, for two sides,
  when lhs - rhs agree up to a constant factor (positive for inequalities): `x > 3` = `3 < x` =
  `2x > 6`. A labelled value is its value: `x = 5`, `AB = 5 cm`, `\\angle A = 30^\\circ`,
  `x \\approx 5`, `f(x) = 2x` equal `5`, `5 cm`, `30°`, `5`, `2x`. `2\\sqrt3 \\approx 3.46` is
  `2\\sqrt3`. An inequality in one variable equals its interval (`2 \\le x < 5` = `[2, 5)`,
  `x > 2` = `(2, \\infty)`), and inequalities joined by `or` their union.
- Collections: tuples and intervals are ordered and keep their brackets (`(1, 2)` != `(2, 1)`,
  `(1, 2]` != `(1, 2)`); sets `\\{...\\}` ignore order and repeats; bare lists (`2, 3`,
  `x = 2 or x = 3`, `\\pm 2`) ignore order against lists and sets and keep it against a tuple;
  unions of intervals ignore the order of their parts; assignments meet a tuple in label order
  (`y = 2, x = 1` = `(1, 2)`).
- Multiple choice (see `choice`): a gold that names option letters accepts the same set of
  letters in any spelling; with `choices`, an answer equal to option i's text stands for letter
  i, and a gold given as an option's text accepts that option's letter. Letters never equal a
  non-letter, except that a bare lower-case letter (`e`, `x`) is then read as a value.
- Hedges: words after a number that change its claim (`6 \\text{ impossible}`, `6 is not
  possible`, `6 maybe`; `mathparse.HEDGE_WORDS`) make the answer text, equal to no value, while
  units and count nouns stay accepted (`6 cm`, `6 apples`). An answer that says it is
  approximate in words (`approximately 6`, `about 6`) equals only a gold that is approximate
  itself (`approximately 6`, `\\approx 6`): against an exact gold it claims less than the gold.
  This is the one rule that is not symmetric.
- Anything else is compared as text: case-folded, LaTeX wrappers removed, no whitespace.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from prco_mega.rewards.choice import choice_letters
from prco_mega.rewards.compare import items_equal, with_forms
from prco_mega.rewards.mathlex import Budget, BudgetExceeded
from prco_mega.rewards.mathparse import Collection, Item, Quantity, Relation, Text, parse_answer
from prco_mega.rewards.mathvalue import as_rational, exact_or_none, free_vars, has_decimal

RESPONSE_WINDOW = 4096
"""Only the last this-many characters of a response are searched for the box."""
MAX_ANSWER_CHARS = 256
"""A boxed answer, a gold or an option longer than this never matches: no real answer is."""
BUDGET_STEPS = 4000
"""Work steps one comparison may spend (parsing both sides included); then it is "not equal"."""
MAX_CHOICES = 26

_APPROX_WORDS = r"approximately|approx\.?|about|around|roughly|nearly|almost|circa"
_APPROX_LEAD = re.compile(rf"^\s*(?:{_APPROX_WORDS})\s+", re.IGNORECASE)
_APPROX_GOLD = re.compile(rf"\\approx|≈|^\s*(?:{_APPROX_WORDS})\s", re.IGNORECASE)
_BOX_COMMANDS = ("\\boxed", "\\fbox")
_BOX_SCAN = re.compile(r"\\(?:boxed|fbox)|\\.|[{}]", re.DOTALL)


@dataclass(frozen=True)
class Number:
    """A parsed numeric answer: exact value, whether written as a decimal, percent mark."""

    value: Fraction
    inexact: bool
    percent: bool


# ----------------------------------------------------------------------------------- extraction


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) with balanced braces, else None.

    One forward pass over the braces and backslashes of the last `RESPONSE_WINDOW` characters
    with a stack of open braces; the box that closes last wins (an outer box over one nested
    inside it, a later box over an earlier one). Whitespace between the command and its brace is
    allowed; `\\{` and `\\}` are literal braces.
    """
    text = text[-RESPONSE_WINDOW:]
    stack: list[tuple[int, bool]] = []  # (content start, opened a box?)
    box_end = -1  # end of the box command that the next brace may open
    best: tuple[int, int] | None = None
    for m in _BOX_SCAN.finditer(text):
        tok = m.group()
        if tok == "{":
            gap = text[box_end:m.start()] if box_end >= 0 else "x"
            stack.append((m.end(), gap == "" or gap.isspace()))
        elif tok == "}" and stack:
            start, is_box = stack.pop()
            if is_box:
                best = (start, m.start())
        box_end = m.end() if tok in _BOX_COMMANDS else -1
    return None if best is None else text[best[0]:best[1]]


# ------------------------------------------------------------------------------------ matching


def canonical_text(plain: str) -> str:
    """Text form for the same-text rule: case-folded, without whitespace (braces kept)."""
    return "".join(plain.split()).casefold()


class GoldAnswer:
    """A gold answer parsed once, to compare many answers with (`matches`).

    Cost: parsing the gold and each option is bounded by `BUDGET_STEPS` each (a gold or option
    over `MAX_ANSWER_CHARS` is not parsed); each `matches` call by `BUDGET_STEPS` more.
    """

    def __init__(self, gold: str, choices: list[str] | None = None,
                 budget_steps: int = BUDGET_STEPS):
        self.gold = gold
        self.budget_steps = budget_steps
        self.last_steps = 0
        """Steps the last `matches` call spent (a work counter for tests and benchmarks)."""
        self.too_long = len(gold) > MAX_ANSWER_CHARS
        self.approximate = bool(_APPROX_GOLD.search(gold))
        """The gold states an approximate value: answers may say "approximately" too."""
        gold = _APPROX_LEAD.sub("", gold) if self.approximate else gold
        self.text = canonical_text(gold)
        self.options: list[Item | None] = []
        self.letters: frozenset[str] | None = None
        self.item: Item | None = None
        if self.too_long or not self.text:
            return
        self.options = [_parse_or_none(c, budget_steps) for c in (choices or [])[:MAX_CHOICES]]
        self.letters = choice_letters(gold)
        self.item = _parse_or_none(gold, budget_steps)
        if self.item is not None:
            try:
                self.item = with_forms(self.item, Budget(budget_steps))
            except BudgetExceeded:
                self.item = None
        if self.letters is None and self.item is not None and self.options:
            try:
                self.letters = self._option_letter(self.item, Budget(budget_steps))
            except BudgetExceeded:
                pass

    def matches(self, answer: str) -> bool:
        """Whether `answer` (a box's content) equals the gold under the module's rules."""
        if self.too_long or not self.text or len(answer) > MAX_ANSWER_CHARS:
            return False
        if self.approximate:
            answer = _APPROX_LEAD.sub("", answer)
        text = canonical_text(answer)
        if not text:
            return False
        if text == self.text:
            return True
        budget = Budget(self.budget_steps)
        try:
            return self._matches(answer, budget)
        except BudgetExceeded:
            return False
        finally:
            self.last_steps = budget.used

    def matches_item(self, item: Item) -> bool:
        """Whether an already parsed answer (not a letter) equals the gold; one budget."""
        if self.item is None or self.letters is not None:
            return False
        budget = Budget(self.budget_steps)
        try:
            return items_equal(item, self.item, budget)
        except BudgetExceeded:
            return False

    def _matches(self, answer: str, budget: Budget) -> bool:
        letters = choice_letters(answer)
        if self.letters is not None and (letters is not None or not _lower_letter(self.gold)):
            if letters is None and self.options:
                letters = self._option_letter(parse_answer(answer, budget), budget)
            return letters == self.letters
        if letters is not None and self.letters is None and not _lower_letter(answer):
            return False  # option letters only ever equal the same letters
        item = parse_answer(answer, budget)
        return self.item is not None and items_equal(item, self.item, budget)

    def _option_letter(self, item: Item, budget: Budget) -> frozenset[str] | None:
        """The letter of the one option equal to `item` (None for none or several)."""
        found = [i for i, option in enumerate(self.options)
                 if option is not None and items_equal(item, option, budget)]
        return frozenset(chr(ord("A") + found[0])) if len(found) == 1 else None


def _lower_letter(text: str) -> bool:
    """A bare lower-case letter (`e`, `x`) may be a value, not an option, against a non-letter."""
    text = text.strip()
    return len(text) == 1 and "a" <= text <= "z"


def _parse_or_none(text: str, budget_steps: int = BUDGET_STEPS) -> Item | None:
    if len(text) > MAX_ANSWER_CHARS or not text.strip():
        return None
    try:
        return parse_answer(text, Budget(budget_steps))
    except BudgetExceeded:
        return None


def answers_match(answer: str, gold: str, choices: list[str] | None = None) -> bool:
    """Whether an extracted answer equals the gold under the module's rules."""
    return GoldAnswer(gold, choices).matches(answer)


def verify(response: str, gold: str, choices: list[str] | None = None) -> float:
    """V(y, a): 1.0 when the last boxed answer of `response` equals `gold`, else 0.0.

    No box, an empty box, or a box longer than `MAX_ANSWER_CHARS` scores 0.0. Cost: one pass
    over the last `RESPONSE_WINDOW` characters plus at most three budgets of `BUDGET_STEPS`.
    """
    boxed = extract_boxed(response)
    if boxed is None:
        return 0.0
    return 1.0 if GoldAnswer(gold, choices).matches(boxed) else 0.0


# ------------------------------------------------------------------------- canonical strings


def parse_number(plain: str) -> Number | None:
    """The number a short answer states (with an optional unit or percent mark), or None.

    A number is a variable-free expression with a rational value: `12`, `-3/4`, `0.5`,
    `\\frac{1}{2}`, `12 cm`, `50\\%`, `1.5\\times10^3`. Text over `MAX_ANSWER_CHARS` is no number.
    """
    item = _parse_or_none(plain)
    if not isinstance(item, Quantity) or free_vars(item.expr):
        return None
    try:
        form = exact_or_none(item.expr, Budget(BUDGET_STEPS))
    except BudgetExceeded:
        return None
    value = None if form is None else as_rational(form)
    if value is None:
        return None
    return Number(value, has_decimal(item.expr), item.percent)


_BASE_SYMBOLS = {"L": "m", "M": "kg", "T": "s", "A": "rad", "U": "unit"}


class _NoCanonicalForm(Exception):
    pass


def _canonical_item(item: Item) -> str:
    if isinstance(item, Text):
        return item.text
    if isinstance(item, Relation):
        sides = [_canonical_item(s) for s in item.sides]
        return "".join(s + op for s, op in zip(sides, (*item.ops, "")))
    if isinstance(item, Collection):
        inner = ",".join(_canonical_item(x) for x in item.items)
        return {"set": "{%s}", "tuple": item.open + "%s" + item.close}.get(item.kind, "(%s)") % inner
    form = exact_or_none(item.expr, Budget(BUDGET_STEPS))
    if form is None:
        raise _NoCanonicalForm
    value = as_rational(form)
    if value is not None and item.unit is not None and not item.unit.pi_power:
        dims = "*".join(f"{_BASE_SYMBOLS.get(b, b)}^{e}" if e != 1 else _BASE_SYMBOLS.get(b, b)
                        for b, e in item.unit.dims)
        return f"{value * item.unit.factor}{dims}"
    suffix = "°" if item.unit is not None else ""
    return f"{_render_form(form)}{suffix}{'%' if item.percent else ''}"


def _render_form(form: dict) -> str:
    """`3/2`, `2\\sqrt{3}`, `1/2\\pi+\\sqrt{2}`: terms in key order, coefficient first."""
    if not form:
        return "0"
    terms = []
    for (a, b, r), c in sorted(form.items()):
        factors = [f"\\pi^{{{a}}}" if a not in (0, 1) else "\\pi" * a,
                   f"e^{{{b}}}" if b not in (0, 1) else "e" * b, f"\\sqrt{{{r}}}" if r > 1 else ""]
        symbols = "".join(factors)
        coefficient = "" if symbols and c == 1 else "-" if symbols and c == -1 else str(c)
        terms.append(coefficient + symbols)
    return "+".join(terms).replace("+-", "-")


def normalize_answer(s: str) -> str:
    """Canonical string of an answer, for logs and de-duplication.

    Numbers become their reduced rational (`0.5`, `\\frac{1}{2}` -> `1/2`; `50\\%` -> `50%`),
    quantities their value in base units (`1,000 cm` -> `10m`), choice letters the sorted
    upper-case letters, collections their canonical elements in brackets, other text its
    case-folded form without whitespace. Cost: at most two budgets of `BUDGET_STEPS`.
    """
    if len(s) > MAX_ANSWER_CHARS:
        return canonical_text(s[:MAX_ANSWER_CHARS])
    letters = choice_letters(s)
    if letters is not None:
        return "".join(sorted(letters))
    item = _parse_or_none(s)
    if item is None:
        return canonical_text(s)
    try:
        return _canonical_item(item)
    except (BudgetExceeded, _NoCanonicalForm):
        return canonical_text(s)
