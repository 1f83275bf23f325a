"""The verifier's parser: a short answer, as `mathlex` tokens, to a structured value.

Why our own recursive-descent parser and not a library: the answers we grade are short (the
verifier caps them at `MAX_ANSWER_CHARS`), the grammar we need is small (numbers, `+ - * / ^`,
implicit products, `\\frac`, `\\sqrt[n]{}`, a dozen functions, brackets, relations, units), and
what matters is that no path turns model text into code and that the work per call is bounded.
A hand-written parser over a token list makes both properties visible in a few hundred lines:
every token and node is charged to a `Budget`, recursion depth is capped, and the output is plain
tuples that `mathvalue` evaluates with a fixed table of functions. A general CAS front end
(`sympify`, `parse_expr`) builds Python code from the text; the LaTeX grammars we looked at pull
in a parser generator runtime and accept far more than an answer can be.

Structure of an answer (`parse_answer`), from the outside in (after a lead-in such as
`The value is`):
- a list: parts separated at bracket depth 0 by `,` `;` `or` `and` -> `Collection("list")`;
- a relation: sides separated by `=` `<` `>` `<=` `>=` `!=` `\\approx` `\\in` -> `Relation`
  (a trailing `\\approx 3.46` after a value is dropped; a left side that is a bare name such as
  `x`, `AB`, `\\angle ABC` or `f(x)` is a label);
- a union of intervals (`\\cup`) -> `Collection("union")`; a bracketed list: `\\{...\\}`
  -> `Collection("set")`, `(a, b)` / `[a, b)` ... -> `Collection("tuple")` with its brackets;
- a quantity: a currency sign, an expression, then an optional unit (`units.parse_unit`),
  percent mark or trailing count nouns (`5 apples`; never words that change the claim,
  `HEDGE_WORDS`: `6 impossible`) -> `Quantity`.
Anything that does not parse is `Text` (its tokens, case-folded), compared as text.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from prco_mega.rewards.mathexpr import (
    FUNC_WORDS,
    INFINITY_WORDS,
    NUMBER_WORDS,
    ParseError,
    expand_pm,
    is_op,
    parse_expr,
)
from prco_mega.rewards.mathlex import Budget, LexError, Token, tokenize
from prco_mega.rewards.units import CURRENCY_SIGNS, DEGREE, UNITS, Unit, parse_unit

UNCOMPUTED = "uncomputed"
"""`Quantity.form` before anyone computed it."""


@dataclass(frozen=True, slots=True)
class Quantity:
    expr: tuple
    unit: Unit | None = None
    percent: bool = False
    form: object = field(default=UNCOMPUTED, compare=False, hash=False)
    """The exact form of `expr` (a dict, or None when it has none), cached for a gold."""


@dataclass(frozen=True, slots=True)
class Relation:
    sides: tuple
    ops: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Collection:
    kind: str
    """"list" (bare, order-free), "set", "tuple" (ordered, bracketed), "union" (of intervals)."""
    open: str
    """The opening bracket; for a list, "or" when its parts were joined by `or`."""
    close: str
    items: tuple


@dataclass(frozen=True, slots=True)
class Text:
    text: str


Item = Quantity | Relation | Collection | Text

LIST_SEPARATORS = frozenset({",", ";", "or", "and", "&"})
RELATIONS = frozenset({"=", "<", ">", "<=", ">=", "!=", "~=", "in"})
_OPENERS = {"(": ")", "[": "]", "{": "}", "lset": "rset"}
_CLOSERS = frozenset({")", "]", "}", "rset"})
_LABEL_OPS = frozenset({"angle", "triangle", "_", "'", "{", "}"})
_LEAD_IN_VERBS = frozenset({"is", "are", "equals", "was"})
HEDGE_WORDS = frozenset({
    "impossible", "not", "no", "none", "never", "cannot", "can't", "isn't", "undefined",
    "undetermined", "indeterminate", "invalid", "unknown", "unsolvable", "nonexistent", "false",
    "wrong", "incorrect", "approximately", "approx", "about", "around", "roughly", "nearly",
    "almost", "circa", "maybe", "perhaps", "probably", "possibly", "likely", "unlikely",
    "guess", "unsure", "uncertain",
})
"""Words after a number that change what it claims (`6 impossible`, `6 is not possible`,
`6 approximately`): never count nouns, so such an answer stays text and equals no value. A
policy that boxes `6 \\text{ impossible}` hedges; it must not collect the reward of `6`."""


# ---------------------------------------------------------------------------- token helpers


def _separator(tok: Token, seps: frozenset[str]) -> bool:
    if tok.kind == "op":
        return tok.text in seps
    return tok.kind == "word" and tok.text.lower() in seps and tok.text.lower() in ("or", "and")


def split_top(tokens: list[Token], seps: frozenset[str]) -> tuple[list[list[Token]], list[str]]:
    """Tokens cut at depth-0 separators: (parts, separators); linear in len(tokens)."""
    parts: list[list[Token]] = [[]]
    found: list[str] = []
    depth = 0
    for tok in tokens:
        if tok.kind == "op" and tok.text in _OPENERS:
            depth += 1
        elif tok.kind == "op" and tok.text in _CLOSERS:
            depth = max(depth - 1, 0)
        elif depth == 0 and _separator(tok, seps):
            found.append(tok.text.lower())
            parts.append([])
            continue
        parts[-1].append(tok)
    return parts, found


def _matching(tokens: list[Token], i: int) -> int:
    """Index of the closer matching the opener at tokens[i] (any bracket kind), or -1."""
    depth = 0
    for j in range(i, len(tokens)):
        tok = tokens[j]
        if tok.kind == "op" and tok.text in _OPENERS:
            depth += 1
        elif tok.kind == "op" and tok.text in _CLOSERS:
            depth -= 1
            if depth == 0:
                return j
    return -1


def _text_of(tokens: list[Token]) -> str:
    return "".join(t.text for t in tokens).casefold()


# ------------------------------------------------------------------------------ structure


def parse_answer(text: str, budget: Budget) -> Item:
    """The structured value of a short answer (module doc); `BudgetExceeded` propagates."""
    try:
        tokens = tokenize(text, budget)
    except LexError:
        return Text("".join(text.split()).casefold())
    while tokens and is_op(tokens[-1], ".", ",", ";"):
        tokens = tokens[:-1]
    tokens = _strip_lead_in(tokens)
    try:
        return _parse_list(tokens, budget)
    except (ParseError, RecursionError):
        return Text(_text_of(tokens))


def _strip_lead_in(tokens: list[Token]) -> list[Token]:
    """Tokens after a leading phrase of words ending in a verb: `The value is 8` -> `8`."""
    for k, tok in enumerate(tokens):
        if tok.kind != "word":
            return tokens
        if k > 0 and k + 1 < len(tokens) and tok.text.lower() in _LEAD_IN_VERBS:
            return tokens[k + 1:]
    return tokens


def _parse_list(tokens: list[Token], budget: Budget) -> Item:
    parts, seps = split_top(tokens, LIST_SEPARATORS)
    parts = [p for p in parts if p]
    if not parts:
        raise ParseError("empty")
    if len(parts) == 1:
        return _parse_relation(parts[0], budget)
    items = tuple(_parse_relation(p, budget) for p in parts)
    return Collection("list", "or" if "or" in seps else "", "", items)


def _parse_relation(tokens: list[Token], budget: Budget) -> Item:
    sides, ops = split_top(tokens, RELATIONS)
    if ops and ops[0] == "~=" and not sides[0]:  # `\approx 3.46`
        sides, ops = sides[1:], ops[1:]
    while ops and ops[-1] == "~=" and (len(sides) > 2 or not is_label(sides[0])):
        sides, ops = sides[:-1], ops[:-1]  # `2\sqrt{3} \approx 3.46`: the exact value counts
    if any(not side for side in sides):
        raise ParseError("empty side")
    if len(sides) == 1:
        return _parse_side(sides[0], budget)
    items = [Quantity(("var", label_name(sides[0])))] if is_label(sides[0]) else \
        [_parse_side(sides[0], budget)]
    items += [_parse_side(side, budget) for side in sides[1:]]
    return Relation(tuple(items), tuple(ops))


def is_label(tokens: list[Token]) -> bool:
    """Whether tokens name a quantity: `x`, `x_1`, `AB`, `\\angle ABC`, `Area`, `f(x)`."""
    if len(tokens) == 4 and tokens[0].kind == "word" and len(tokens[0].text) == 1 and \
            is_op(tokens[1], "(") and tokens[2].kind == "word" and is_op(tokens[3], ")"):
        return True
    if not any(t.kind in ("word", "ident") for t in tokens):
        return False
    if any(t.kind == "word" and t.text.lower() in NUMBER_WORDS for t in tokens):
        return False
    return all(t.kind in ("word", "ident") or is_op(t, *_LABEL_OPS)
               or (t.kind == "num" and i > 0 and is_op(tokens[i - 1], "_", "{"))
               for i, t in enumerate(tokens))


def label_name(tokens: list[Token]) -> str:
    return "".join(t.text for t in tokens if t.text not in ("{", "}"))


def _parse_side(tokens: list[Token], budget: Budget) -> Item:
    parts, _ = split_top(tokens, frozenset({"cup"}))
    if len(parts) > 1:
        return Collection("union", "", "", tuple(_parse_side(p, budget) for p in parts if p))
    if len(tokens) == 1 and tokens[0].kind == "cmd" and tokens[0].text in ("emptyset",
                                                                           "varnothing"):
        return Collection("set", "lset", "rset", ())
    if is_op(tokens[0], *_OPENERS) and _matching(tokens, 0) == len(tokens) - 1:
        elems, _ = split_top(tokens[1:-1], frozenset({",", ";"}))
        if tokens[0].text == "{":  # LaTeX grouping braces are invisible
            return _parse_list(tokens[1:-1], budget)
        if tokens[0].text == "lset":
            items = tuple(_parse_relation(e, budget) for e in elems if e)
            return Collection("set", "lset", "rset", items)
        if len(elems) >= 2:
            if any(not e for e in elems):
                raise ParseError("empty element")
            items = tuple(_parse_relation(e, budget) for e in elems)
            return Collection("tuple", tokens[0].text, tokens[-1].text, items)
    return _parse_quantity(tokens, budget)


def _parse_quantity(tokens: list[Token], budget: Budget) -> Item:
    unit = None
    if tokens[0].kind == "op" and tokens[0].text in CURRENCY_SIGNS and len(tokens) > 1:
        unit, tokens = UNITS[tokens[0].text], tokens[1:]
    percent = tokens[-1].kind == "word" and tokens[-1].text.lower() in ("percent", "pct")
    if percent and len(tokens) > 1:
        tokens = tokens[:-1]
    if unit is None:
        stripped = _strip_unit(tokens, budget)
        if stripped is not None:
            return _quantities(stripped[0], stripped[1], percent)
    return _quantities(parse_expr(tokens, budget), unit, percent)


def _strip_unit(tokens: list[Token], budget: Budget) -> tuple[tuple, Unit | None] | None:
    """(value, unit) when tokens end with a unit or count nouns after a variable-free value."""
    for k in range(min(6, len(tokens) - 1), 0, -1):
        unit = parse_unit(tokens[-k:])
        nouns = unit is None and _count_nouns(tokens[-k:])
        if unit is None and not nouns:
            continue
        try:
            expr = parse_expr(tokens[:-k], budget)
        except ParseError:
            continue
        if not _has_var_or_func(expr):
            return expr, unit
    return None


def _count_nouns(tokens: list[Token]) -> bool:
    """Trailing words after a space that name what is counted (`5 apples`, `3 red circles`)."""
    return len(tokens) <= 3 and tokens[0].space and all(
        t.kind == "word" and len(t.text) >= 2 and t.text.lower() not in FUNC_WORDS
        and t.text.lower() not in INFINITY_WORDS and t.text.lower() not in NUMBER_WORDS
        and t.text.lower() not in HEDGE_WORDS for t in tokens)


def _has_var_or_func(node: tuple) -> bool:
    kind = node[0]
    if kind in ("var", "func", "log"):
        return True
    if kind in ("num", "const", "inf"):
        return False
    children = node[1] if kind in ("add", "mul") else node[1:]
    return any(isinstance(c, tuple) and _has_var_or_func(c) for c in children)


def _quantities(expr: tuple, unit: Unit | None, percent: bool) -> Item:
    """A Quantity, or a list of them when the expression has `\\pm` signs."""
    if expr[0] == "deg" and unit is None:
        expr, unit = expr[1], DEGREE
    if expr[0] == "pct" and not percent:
        expr, percent = expr[1], True
    values = expand_pm(expr)
    if len(values) == 1:
        return Quantity(values[0], unit, percent)
    return Collection("list", "", "", tuple(Quantity(v, unit, percent) for v in values))
