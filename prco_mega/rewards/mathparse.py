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

Structure of an answer (`parse_answer`), from the outside in:
- a list: parts separated at bracket depth 0 by `,` `;` `or` `and` -> `Collection("list")`;
- a relation: sides separated by `=` `<` `>` `<=` `>=` `!=` `\\approx` `\\in` -> `Relation`
  (a trailing `\\approx 3.46` after a value is dropped; a left side that is a bare name such as
  `x`, `AB`, `\\angle ABC` or `f(x)` is a label);
- a union of intervals (`\\cup`) -> `Collection("union")`; a bracketed list: `\\{...\\}`
  -> `Collection("set")`, `(a, b)` / `[a, b)` ... -> `Collection("tuple")` with its brackets;
- a quantity: a currency sign, an expression, then an optional unit (`units.parse_unit`),
  percent mark or trailing count nouns (`5 apples`) -> `Quantity`.
Anything that does not parse is `Text` (its tokens, case-folded), compared as text.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from itertools import product

from prco_mega.rewards.mathlex import Budget, LexError, Token, tokenize
from prco_mega.rewards.units import CURRENCY_SIGNS, DEGREE, UNITS, Unit, parse_unit

MAX_DEPTH = 40
"""Nesting deeper than this is not parsed (the answer becomes text)."""
MAX_PM = 3
"""At most this many `\\pm` signs are expanded (2**3 values)."""


class ParseError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Quantity:
    expr: tuple
    unit: Unit | None = None
    percent: bool = False


@dataclass(frozen=True, slots=True)
class Relation:
    sides: tuple
    ops: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Collection:
    kind: str
    """"list" (bare, order-free), "set", "tuple" (ordered, bracketed), "union" (of intervals)."""
    open: str
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
_FUNC_WORDS = frozenset({"sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan",
                         "sinh", "cosh", "tanh", "log", "ln", "lg", "exp"})
NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty".split())}
_INFINITY_WORDS = frozenset({"inf", "infty", "infinity"})
_LABEL_OPS = frozenset({"angle", "triangle", "_", "'", "{", "}"})


# ---------------------------------------------------------------------------- token helpers


def _is_op(tok: Token | None, *texts: str) -> bool:
    return tok is not None and tok.kind == "op" and tok.text in texts


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
    while tokens and _is_op(tokens[-1], ".", ",", ";"):
        tokens = tokens[:-1]
    try:
        return _parse_list(tokens, budget)
    except (ParseError, RecursionError):
        return Text(_text_of(tokens))


def _parse_list(tokens: list[Token], budget: Budget) -> Item:
    parts, _ = split_top(tokens, LIST_SEPARATORS)
    parts = [p for p in parts if p]
    if not parts:
        raise ParseError("empty")
    if len(parts) == 1:
        return _parse_relation(parts[0], budget)
    return Collection("list", "", "", tuple(_parse_relation(p, budget) for p in parts))


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
            _is_op(tokens[1], "(") and tokens[2].kind == "word" and _is_op(tokens[3], ")"):
        return True
    if not any(t.kind in ("word", "ident") for t in tokens):
        return False
    if any(t.kind == "word" and t.text.lower() in NUMBER_WORDS for t in tokens):
        return False
    return all(t.kind in ("word", "ident") or _is_op(t, *_LABEL_OPS)
               or (t.kind == "num" and i > 0 and _is_op(tokens[i - 1], "_", "{"))
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
    if _is_op(tokens[0], *_OPENERS) and _matching(tokens, 0) == len(tokens) - 1:
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
        t.kind == "word" and len(t.text) >= 2 and t.text.lower() not in _FUNC_WORDS
        and t.text.lower() not in _INFINITY_WORDS and t.text.lower() not in NUMBER_WORDS
        for t in tokens)


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


# --------------------------------------------------------------------------- plus-minus


def expand_pm(node: tuple) -> list[tuple]:
    """All values of a node with `("pm", x)` markers (+x and -x), at most 2**MAX_PM."""
    if _count_pm(node) > MAX_PM:
        raise ParseError("too many plus-minus signs")
    return _expand(node)


def _count_pm(node: tuple) -> int:
    if node[0] == "pm":
        return 1 + _count_pm(node[1])
    return sum(_count_pm(c) for c in _child_nodes(node))


def _child_nodes(node: tuple) -> tuple:
    kind = node[0]
    if kind in ("add", "mul"):
        return node[1]
    if kind == "func":
        return (node[2],)
    return tuple(c for c in node[1:] if isinstance(c, tuple))


def _expand(node: tuple) -> list[tuple]:
    kind = node[0]
    if kind == "pm":
        inner = _expand(node[1])
        return inner + [("neg", x) for x in inner]
    if kind in ("add", "mul"):
        return [(kind, combo) for combo in product(*(_expand(c) for c in node[1]))]
    if kind == "func":
        return [("func", node[1], x) for x in _expand(node[2])]
    if kind in ("num", "const", "var", "inf"):
        return [node]
    slots = [_expand(c) if isinstance(c, tuple) else [c] for c in node[1:]]
    return [(kind, *combo) for combo in product(*slots)]


# --------------------------------------------------------------------------- expressions


def parse_expr(tokens: list[Token], budget: Budget) -> tuple:
    """The AST (see `mathvalue`) of an expression that spans all of `tokens`."""
    if not tokens:
        raise ParseError("empty expression")
    parser = _ExprParser(tokens, budget)
    node = parser.sum()
    if parser.i != len(tokens):
        raise ParseError(f"unexpected {tokens[parser.i].text!r}")
    return node


def _number(text: str) -> tuple:
    return ("num", Fraction(text.replace(",", "")), text)


def _mul(factors: list[tuple]) -> tuple:
    return factors[0] if len(factors) == 1 else ("mul", tuple(factors))


class _ExprParser:
    """Recursive descent: sum > term (explicit and implicit products) > unary > power > atom."""

    def __init__(self, tokens: list[Token], budget: Budget):
        self.t, self.i, self.budget, self.depth, self.bars = tokens, 0, budget, 0, 0

    def peek(self, k: int = 0) -> Token | None:
        j = self.i + k
        return self.t[j] if j < len(self.t) else None

    def take(self) -> Token:
        tok = self.peek()
        if tok is None:
            raise ParseError("unexpected end")
        self.i += 1
        self.budget.tick()
        return tok

    def expect(self, *texts: str) -> None:
        if not _is_op(self.peek(), *texts):
            raise ParseError(f"expected {texts}")
        self.take()

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ParseError("nested too deep")

    def sum(self) -> tuple:
        self.enter()
        terms = [self.unary()]
        while _is_op(self.peek(), "+", "-", "pm", "mp"):
            op = self.take().text
            term = self.unary()
            terms.append({"+": term, "-": ("neg", term)}.get(op, ("pm", term)))
        self.depth -= 1
        return terms[0] if len(terms) == 1 else ("add", tuple(terms))

    def unary(self) -> tuple:
        tok = self.peek()
        if _is_op(tok, "-", "+", "pm", "mp"):
            self.take()
            self.enter()
            inner = self.unary()
            self.depth -= 1
            return {"-": ("neg", inner), "+": inner}.get(tok.text, ("pm", inner))
        return self.term()

    def term(self) -> tuple:
        factors = [self.power()]
        while True:
            tok = self.peek()
            if _is_op(tok, "*"):
                self.take()
                factors.append(self.signed_power())
            elif _is_op(tok, "/"):
                self.take()
                factors = [("div", _mul(factors), self.signed_power())]
            elif self.starts_atom(tok):
                if tok.kind == "num" and self.t[self.i - 1].kind == "num":
                    raise ParseError("two numerals in a row")
                factors.append(self.power())
            else:
                return _mul(factors)

    def signed_power(self) -> tuple:
        if _is_op(self.peek(), "-"):
            self.take()
            return ("neg", self.signed_power())
        return self.power()

    def starts_atom(self, tok: Token | None) -> bool:
        if tok is None:
            return False
        if tok.kind in ("num", "word", "ident", "func"):
            return True
        if tok.kind == "cmd":
            return tok.text not in ("emptyset", "varnothing")
        return tok.text in ("(", "{", "[") or (tok.text == "|" and not self.bars)

    def power(self) -> tuple:
        base = self.postfix(self.atom())
        if not _is_op(self.peek(), "^"):
            return base
        self.take()
        if _is_op(self.peek(), "deg"):
            self.take()
            return self.postfix(("deg", base))
        if _is_op(self.peek(), "{") and _is_op(self.peek(1), "deg") and _is_op(self.peek(2), "}"):
            self.i += 3
            return self.postfix(("deg", base))
        return ("pow", base, self.exponent())

    def exponent(self) -> tuple:
        self.enter()
        if _is_op(self.peek(), "-", "+"):
            sign = self.take().text
            inner = self.exponent()
            node = ("neg", inner) if sign == "-" else inner
        else:
            node = self.power()
        self.depth -= 1
        return node

    def postfix(self, node: tuple) -> tuple:
        while True:
            tok = self.peek()
            if _is_op(tok, "!"):
                node = ("fact", node)
            elif _is_op(tok, "deg"):
                node = ("deg", node)
            elif _is_op(tok, "%"):
                node = ("pct", node)
            elif _is_op(tok, "'", "_") and node[0] == "var":
                self.take()
                node = ("var", node[1] + tok.text + (self.subscript() if tok.text == "_" else ""))
                continue
            else:
                return node
            self.take()

    def subscript(self) -> str:
        tok = self.take()
        if tok.kind in ("num", "word", "ident"):
            return tok.text
        if tok.text != "{":
            raise ParseError("bad subscript")
        parts = []
        while not _is_op(self.peek(), "}"):
            parts.append(self.take().text)
        self.take()
        return "{" + "".join(parts) + "}"

    def atom(self) -> tuple:
        tok = self.take()
        if tok.kind == "num":
            return self.mixed_number(_number(tok.text))
        if tok.kind == "word":
            return self.word(tok.text)
        if tok.kind == "ident":
            return ("var", tok.text)
        if tok.kind == "func":
            return self.function(tok.text)
        if tok.kind == "cmd":
            return self.command(tok.text)
        if tok.text in ("(", "[", "{"):
            return self.group({"(": ")", "[": "]", "{": "}"}[tok.text])
        if tok.text == "|":  # inside |...| a bar closes, so `|x||y|` is a product
            self.bars += 1
            node = ("abs", self.group("|"))
            self.bars -= 1
            return node
        raise ParseError(f"unexpected {tok.text!r}")

    def group(self, close: str) -> tuple:
        node = self.sum()
        self.expect(close)
        return node

    def mixed_number(self, whole: tuple) -> tuple:
        """`1\\frac{1}{2}` and `2 1/2` are mixed numbers (a proper fraction after an integer)."""
        if not whole[2].isdigit():
            return whole
        frac = self.proper_fraction()
        return ("add", (whole, frac)) if frac is not None else whole

    def proper_fraction(self) -> tuple | None:
        tok, start = self.peek(), self.i
        if tok is not None and tok.kind == "cmd" and tok.text in ("frac", "dfrac", "tfrac"):
            self.take()
            num, den = self.argument(), self.argument()
        elif tok is not None and tok.kind == "num" and tok.space and _is_op(self.peek(1), "/") \
                and self.peek(2) is not None and self.peek(2).kind == "num":
            num = _number(self.take().text)
            self.take()
            den = _number(self.take().text)
        else:
            return None
        if num[0] == den[0] == "num" and num[2].isdigit() and den[2].isdigit() \
                and 0 < num[1] < den[1]:
            return ("div", num, den)
        self.i = start
        return None

    def word(self, text: str) -> tuple:
        low = text.lower()
        if low in NUMBER_WORDS:
            return ("num", Fraction(NUMBER_WORDS[low]), str(NUMBER_WORDS[low]))
        if low in _FUNC_WORDS:
            return self.function(low)
        if low == "pi":
            return ("const", "pi")
        if low == "sqrt":
            return ("root", self.argument(paren=True), 2)
        if low in _INFINITY_WORDS:
            return ("inf",)
        if text == "e":
            return ("const", "e")
        if len(text) == 1:
            return ("var", text)
        if len(text) == 2 and text.isascii():
            return ("mul", (self.word(text[0]), self.word(text[1])))
        raise ParseError(f"word {text!r}")

    def command(self, name: str) -> tuple:
        if name in ("frac", "dfrac", "tfrac", "cfrac"):
            return ("div", self.argument(), self.argument())
        if name in ("binom", "dbinom", "tbinom"):
            return ("binom", self.argument(), self.argument())
        if name == "sqrt":
            n = 2
            if _is_op(self.peek(), "["):
                self.take()
                tok = self.take()
                if tok.kind != "num" or not tok.text.isdigit() or not 2 <= int(tok.text) <= 64:
                    raise ParseError("bad root index")
                n = int(tok.text)
                self.expect("]")
            return ("root", self.argument(paren=True), n)
        if name == "pi":
            return ("const", "pi")
        if name == "infty":
            return ("inf",)
        raise ParseError(f"command {name}")

    def argument(self, paren: bool = False) -> tuple:
        """A macro argument: a braced group, (for roots) a parenthesised one, or one atom."""
        tok = self.peek()
        if _is_op(tok, "{"):
            self.take()
            return self.group("}")
        if paren and _is_op(tok, "("):
            self.take()
            return self.group(")")
        self.enter()
        node = self.postfix(self.atom())
        self.depth -= 1
        return node

    def function(self, name: str) -> tuple:
        power = base = None
        if _is_op(self.peek(), "^"):
            self.take()
            power = self.exponent()
        if name == "log" and _is_op(self.peek(), "_"):
            self.take()
            base = self.argument()
        self.enter()
        if _is_op(self.peek(), "(", "{"):
            arg = self.group({"(": ")", "{": "}"}[self.take().text])
        else:
            factors = [self.power()]
            while self.starts_atom(self.peek()) and self.peek().kind != "func":
                factors.append(self.power())
            arg = _mul(factors)
        self.depth -= 1
        if name in ("log", "lg"):
            node = ("log", arg, base or ("num", Fraction(10), "10"))
        else:
            node = ("func", name, arg)
        return node if power is None else ("pow", node, power)
