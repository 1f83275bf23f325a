"""Expressions of the verifier's parser: tokens to the tuples that `mathvalue` evaluates.

Recursive descent, one function per precedence level: sum (`+ - \\pm`) > term (`*`, `/` and
implicit products such as `2x`, `3\\sqrt{2}`, `x(x+1)`) > unary sign > power (`^`, right
associative; `^\\circ` is a degree mark) > postfix (`!`, `%`, degree, primes, subscripts) > atom
(numbers, mixed numbers `1\\frac{1}{2}`, number words, variables, `\\pi`, `e`, `\\infty`,
`\\frac`, `\\sqrt[n]{}`, `\\binom`, functions, brackets, `|x|`). Each token taken costs one
budget step and nesting is capped at `MAX_DEPTH`, so the work is linear in the tokens.
Node shapes are listed in `mathvalue`; `("pm", x)` marks a `\\pm` until `expand_pm` expands it.
"""
from __future__ import annotations

from fractions import Fraction
from itertools import product

from prco_mega.rewards.mathlex import Budget, Token

MAX_DEPTH = 40
"""Nesting deeper than this is not parsed (the answer becomes text)."""
MAX_PM = 3
"""At most this many `\\pm` signs are expanded (2**3 values)."""
FUNC_WORDS = frozenset({"sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan",
                        "sinh", "cosh", "tanh", "log", "ln", "lg", "exp"})
NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}
NUMBER_WORDS.update({w: 10 * i for i, w in enumerate(
    "twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)})
"""Number words an answer may be: alone (`three`) or a tens-hyphen-unit compound (`twenty-one`)."""
INFINITY_WORDS = frozenset({"inf", "infty", "infinity"})


class ParseError(ValueError):
    pass


def is_op(tok: Token | None, *texts: str) -> bool:
    return tok is not None and tok.kind == "op" and tok.text in texts


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
    if any(t.kind == "word" and t.text.lower() in NUMBER_WORDS for t in tokens):
        return _number_words(tokens)
    parser = _ExprParser(tokens, budget)
    node = parser.sum()
    if parser.i != len(tokens):
        raise ParseError(f"unexpected {tokens[parser.i].text!r}")
    return node


def _number_words(tokens: list[Token]) -> tuple:
    """`three`, `-three`, `twenty-one`; number words in any other company are not read (so
    `two hundred fifty` never becomes a product)."""
    sign = 1
    if is_op(tokens[0], "-", "+") and len(tokens) > 1:
        sign, tokens = (-1 if tokens[0].text == "-" else 1), tokens[1:]
    words = [t.text.lower() for t in tokens]
    if len(tokens) == 1 and tokens[0].kind == "word":
        value = NUMBER_WORDS[words[0]]
    elif len(tokens) == 3 and is_op(tokens[1], "-") and not tokens[1].space \
            and not tokens[2].space and NUMBER_WORDS.get(words[0], 0) >= 20 \
            and NUMBER_WORDS[words[0]] % 10 == 0 and 0 < NUMBER_WORDS.get(words[2], 10) < 10:
        value = NUMBER_WORDS[words[0]] + NUMBER_WORDS[words[2]]
    else:
        raise ParseError("number words")
    return ("num", Fraction(sign * value), str(sign * value))


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
        if not is_op(self.peek(), *texts):
            raise ParseError(f"expected {texts}")
        self.take()

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ParseError("nested too deep")

    def sum(self) -> tuple:
        self.enter()
        terms = [self.unary()]
        while is_op(self.peek(), "+", "-", "pm", "mp"):
            op = self.take().text
            term = self.unary()
            terms.append({"+": term, "-": ("neg", term)}.get(op, ("pm", term)))
        self.depth -= 1
        return terms[0] if len(terms) == 1 else ("add", tuple(terms))

    def unary(self) -> tuple:
        tok = self.peek()
        if is_op(tok, "-", "+", "pm", "mp"):
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
            if is_op(tok, "*"):
                self.take()
                factors.append(self.signed_power())
            elif is_op(tok, "/"):
                self.take()
                factors = [("div", _mul(factors), self.signed_power())]
            elif self.starts_atom(tok):
                if tok.kind == "num" and self.t[self.i - 1].kind == "num":
                    raise ParseError("two numerals in a row")
                factors.append(self.power())
            else:
                return _mul(factors)

    def signed_power(self) -> tuple:
        if is_op(self.peek(), "-"):
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
        if not is_op(self.peek(), "^"):
            return base
        self.take()
        if is_op(self.peek(), "deg"):
            self.take()
            return self.postfix(("deg", base))
        if is_op(self.peek(), "{") and is_op(self.peek(1), "deg") and is_op(self.peek(2), "}"):
            self.i += 3
            return self.postfix(("deg", base))
        return ("pow", base, self.exponent())

    def exponent(self) -> tuple:
        self.enter()
        if is_op(self.peek(), "-", "+"):
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
            if is_op(tok, "!"):
                node = ("fact", node)
            elif is_op(tok, "deg"):
                node = ("deg", node)
            elif is_op(tok, "%"):
                node = ("pct", node)
            elif is_op(tok, "'", "_") and node[0] == "var":
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
        while not is_op(self.peek(), "}"):
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
        elif tok is not None and tok.kind == "num" and tok.space and is_op(self.peek(1), "/") \
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
        if low in FUNC_WORDS:
            return self.function(low)
        if low == "pi":
            return ("const", "pi")
        if low == "sqrt":
            return ("root", self.argument(paren=True), 2)
        if low in INFINITY_WORDS:
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
            if is_op(self.peek(), "["):
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
        if is_op(tok, "{"):
            self.take()
            return self.group("}")
        if paren and is_op(tok, "("):
            self.take()
            return self.group(")")
        self.enter()
        node = self.postfix(self.atom())
        self.depth -= 1
        return node

    def function(self, name: str) -> tuple:
        power = base = None
        if is_op(self.peek(), "^"):
            self.take()
            power = self.exponent()
        if name == "log" and is_op(self.peek(), "_"):
            self.take()
            base = self.argument()
        self.enter()
        if is_op(self.peek(), "(", "{"):
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
