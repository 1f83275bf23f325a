"""Tokens of a short math answer written in LaTeX, plain text or Unicode math.

The lexer is the first half of the verifier's own parser (see `mathparse`). It never evaluates
anything: it maps Unicode math to LaTeX spellings (`½` -> `\\frac{1}{2}`, `x²` -> `x^{2}`,
`√` -> `\\sqrt`, fullwidth digits -> ASCII), strips presentation-only LaTeX (`\\left`, spacing,
`\\text{...}` wrappers with their braces) and cuts the rest into `Token`s. Its cost is linear in
the input, whose length the verifier caps, and every token it emits is charged to the `Budget`.

Token kinds: `num` (a numeral: `12`, `0.5`, `1,000`, `1.5e3`), `word` (a run of letters),
`ident` (a named symbol such as `theta`), `func` (`sin`, `log`, ...), `cmd` (a LaTeX command the
parser knows: `frac`, `sqrt`, `pi`, `infty`, `binom`, ...) and `op` (everything else: `+`, `(`,
`<=`, `pm`, `cup`, `lset` for `\\{`, `deg` for a degree mark, `$` for a dollar sign, ...).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass


class BudgetExceeded(Exception):
    """The per-call work budget ran out; the caller answers "not equal"."""


class Budget:
    """A hard per-call step counter: every token, node and arithmetic step costs one step."""

    __slots__ = ("left", "used")

    def __init__(self, steps: int):
        self.left = steps
        self.used = 0

    def tick(self, n: int = 1) -> None:
        if n > self.left:  # `used` never exceeds the budget: the step that would is not taken
            self.used += max(self.left, 0)
            self.left = 0
            raise BudgetExceeded
        self.left -= n
        self.used += n


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    text: str
    space: bool = False
    """Whether whitespace preceded the token (mixed numbers `2 1/2`, words `5 apples`)."""


class LexError(ValueError):
    """Text the lexer cannot read as math (an unknown command, an unbalanced wrapper)."""


# ------------------------------------------------------------------------------ Unicode map

_SUPERSCRIPTS = dict(zip("⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻ⁿ", "0123456789+-n"))
_SUBSCRIPTS = dict(zip("₀₁₂₃₄₅₆₇₈₉", "0123456789"))
_VULGAR = {"½": (1, 2), "⅓": (1, 3), "⅔": (2, 3), "¼": (1, 4), "¾": (3, 4), "⅕": (1, 5),
           "⅖": (2, 5), "⅗": (3, 5), "⅘": (4, 5), "⅙": (1, 6), "⅚": (5, 6), "⅐": (1, 7),
           "⅛": (1, 8), "⅜": (3, 8), "⅝": (5, 8), "⅞": (7, 8), "⅑": (1, 9), "⅒": (1, 10)}
_UNICODE = {
    "√": "\\sqrt ", "∛": "\\sqrt[3] ", "∜": "\\sqrt[4] ", "×": "\\times ", "✕": "\\times ",
    "⨯": "\\times ", "·": "\\cdot ", "⋅": "\\cdot ", "∙": "\\cdot ", "÷": "\\div ", "−": "-",
    "‒": "-", "–": "-", "—": "-", "﹣": "-", "≤": "\\le ", "⩽": "\\le ", "≥": "\\ge ",
    "⩾": "\\ge ", "≠": "\\ne ", "≈": "\\approx ", "±": "\\pm ", "∓": "\\mp ", "π": "\\pi ",
    "∞": "\\infty ", "°": "\\degree ", "∠": "\\angle ", "∪": "\\cup ", "∩": "\\cap ",
    "∈": "\\in ", "⁄": "/", "′": "'", "″": "''", "。": ".", "、": ",", "\u00a0": " ",
    "\u3000": " ", "θ": "\\theta ", "α": "\\alpha ", "β": "\\beta ", "γ": "\\gamma ",
    "φ": "\\phi ", "λ": "\\lambda ", "μ": "\\mu ", "Ω": "\\Omega ", "⟨": "\\langle ",
    "⟩": "\\rangle ", "∅": "\\emptyset ", "€": "\\euro ", "£": "\\pounds ", "¥": "\\yen ",
    "￥": "\\yen ", "₹": "\\rupee ", "∣": "|", "∶": ":",
}
_INVISIBLE = {"\u200b", "\u200c", "\u200d", "\ufeff", "\u2061", "\u2062", "\u2063"}


def unicode_to_latex(s: str) -> str:
    """`s` with Unicode math written as LaTeX/ASCII (see module doc); linear in len(s)."""
    out: list[str] = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c in _SUPERSCRIPTS or c in _SUBSCRIPTS:
            table, mark = (_SUPERSCRIPTS, "^") if c in _SUPERSCRIPTS else (_SUBSCRIPTS, "_")
            j = i
            while j < n and s[j] in table:
                j += 1
            out.append(mark + "{" + "".join(table[ch] for ch in s[i:j]) + "}")
            i = j
            continue
        if c in _VULGAR:
            out.append("\\frac{%d}{%d}" % _VULGAR[c])
        elif c in _UNICODE:
            out.append(_UNICODE[c])
        elif "\uff01" <= c <= "\uff5e":  # fullwidth ASCII
            out.append(_UNICODE.get(chr(ord(c) - 0xFEE0), chr(ord(c) - 0xFEE0)))
        elif c > "\x7f" and unicodedata.decimal(c, None) is not None:  # other scripts' digits
            out.append(str(unicodedata.decimal(c)))
        elif c not in _INVISIBLE:
            out.append(c)
        i += 1
    return "".join(out)


# -------------------------------------------------------------------------- LaTeX commands

WRAPPERS = frozenset({
    "text", "textrm", "textbf", "textit", "textnormal", "textsf", "texttt", "mathrm", "mathbf",
    "mathit", "mathsf", "mathtt", "mathnormal", "boldsymbol", "bm", "mbox", "hbox", "boxed",
    "fbox", "operatorname", "overline", "overrightarrow", "overleftrightarrow", "vec", "hat",
    "bar", "widehat", "underline", "mathbb", "mathcal", "emph", "textup", "displaystyle",
})
"""Commands whose braced argument is kept and whose braces are dropped."""
_DROPPED = frozenset({
    "left", "right", "big", "Big", "bigg", "Bigg", "bigl", "bigr", "Bigl", "Bigr", "biggl",
    "biggr", "textstyle", "scriptstyle", ",", ";", ":", "!", " ", "quad", "qquad", "space",
    "thinspace", "medspace", "thickspace", "enspace", "limits", "nolimits", "mathop",
})
_OPS = {
    "cdot": "*", "times": "*", "ast": "*", "div": "/", "pm": "pm", "mp": "mp", "le": "<=",
    "leq": "<=", "leqslant": "<=", "ge": ">=", "geq": ">=", "geqslant": ">=", "lt": "<",
    "gt": ">", "ne": "!=", "neq": "!=", "approx": "~=", "simeq": "~=", "thickapprox": "~=",
    "%": "%", "$": "$", "{": "lset", "}": "rset", "lbrace": "lset", "rbrace": "rset",
    "cup": "cup", "cap": "cap", "in": "in", "circ": "deg", "degree": "deg", "langle": "(",
    "rangle": ")", "lvert": "|", "rvert": "|", "vert": "|", "mid": "|", "|": "||",
    "euro": "$EUR", "pounds": "$GBP", "yen": "$JPY", "rupee": "$INR", "textdollar": "$",
    "angle": "angle", "measuredangle": "angle", "triangle": "triangle", "prime": "'",
    "lbrack": "[", "rbrack": "]", "colon": ":", "to": "->", "rightarrow": "->", "land": "and",
    "lor": "or", "wedge": "and", "vee": "or", "_": "_", "&": "&", "#": "#",
}
_FUNCS = frozenset({
    "sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh",
    "tanh", "log", "ln", "lg", "exp",
})
_GREEK = frozenset({
    "alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta",
    "vartheta", "iota", "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon",
    "phi", "varphi", "chi", "psi", "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Sigma",
    "Phi", "Psi", "Omega",
})
_COMMANDS = frozenset({"frac", "dfrac", "tfrac", "cfrac", "sqrt", "pi", "infty", "binom",
                       "dbinom", "tbinom", "emptyset", "varnothing"})
_SPLIT_DIGITS = {"frac": 2, "dfrac": 2, "tfrac": 2, "cfrac": 2, "sqrt": 1, "binom": 2,
                 "dbinom": 2, "tbinom": 2}
"""Commands whose bare digit arguments are single digits (`\\frac12` is 1/2)."""

_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+(?![\d.]))?|\.\d+", re.ASCII)
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?![\d,])(?:\.\d+)?", re.ASCII)
_LATEX_GROUPING = re.compile(r"(?<=\d)(?:\{,\}|\\,|\\ |~|\\!)(?=\d{3}(?!\d))", re.ASCII)
_LATEX_THOUSANDS = re.compile("\\d{1,3}(?:\x02\\d{3})+(?![\\d\x02])(?:\\.\\d+)?", re.ASCII)
"""Digits grouped by `{,}` or a LaTeX space are one number even inside brackets."""
_LATEX_SPACE = re.compile(r"\\(?:[,;: !]|q?quad(?![a-zA-Z]))")
_WORD = re.compile(r"[^\W\d_]+")
_TWO_CHAR_OPS = ("<=", ">=", "!=", "==", "->", "=>", ":=", "<>")
_OP_ALIASES = {"==": "=", "=>": "->", ":=": "=", "<>": "!="}
_OPENERS = frozenset({"(", "[", "{", "lset"})
_CLOSERS = frozenset({")", "]", "}", "rset"})


def _strip_dollars(s: str) -> str:
    """Math-mode `$...$` delimiters removed; a lone `$` before a number is a dollar sign."""
    s = s.replace("\\$", "\x01")
    if s.count("$") >= 2 and s.count("$") % 2 == 0:
        s = s.replace("$", " ")
    return s.replace("\x01", "\\$")


def _matching_brace(s: str, i: int) -> int:
    """Index of the `}` closing the `{` at s[i] (escaped braces skipped), or -1."""
    depth = 0
    j = i
    while j < len(s):
        c = s[j]
        if c == "\\":
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return j
        j += 1
    return -1


def prepare(s: str) -> str:
    """Unicode mapped, dollar delimiters and LaTeX digit grouping removed (linear)."""
    s = unicode_to_latex(s)
    s = _strip_dollars(s)
    return _LATEX_SPACE.sub(" ", _LATEX_GROUPING.sub("\x02", s))


def tokenize(s: str, budget: Budget) -> list[Token]:
    """Tokens of `s` (see module doc); raises `LexError` on text that is not math-like."""
    s = prepare(s)
    tokens: list[Token] = []
    closers: list[int] = []  # indices of the `}` of wrappers whose braces are dropped
    i, n, space, split_digits, depth = 0, len(s), False, 0, 0
    while i < n:
        budget.tick()
        c = s[i]
        if closers and i == closers[-1]:
            closers.pop()
            i += 1
            continue
        if c.isspace() or c == "~":
            space, i = True, i + 1
            continue
        before = len(tokens)
        if c == "\\":
            i, split_digits = _command(s, i, tokens, closers, space, split_digits)
        elif "0" <= c <= "9" or (c == "." and i + 1 < n and "0" <= s[i + 1] <= "9"):
            i, split_digits = _numeral(s, i, tokens, space, split_digits, depth)
        elif c.isalpha():
            m = _WORD.match(s, i)
            tokens.append(Token("word", m[0], space))
            i, split_digits = m.end(), 0
        else:
            text = s[i:i + 2] if s[i:i + 2] in _TWO_CHAR_OPS else c
            tokens.append(Token("op", _OP_ALIASES.get(text, text), space))
            i, split_digits = i + len(text), 0
        for t in tokens[before:]:
            if t.kind == "op" and t.text in _OPENERS:
                depth += 1
            elif t.kind == "op" and t.text in _CLOSERS and depth:
                depth -= 1
        space = space and len(tokens) == before
    return tokens


def _numeral(s: str, i: int, tokens: list[Token], space: bool, split_digits: int,
             depth: int) -> tuple[int, int]:
    if split_digits and "0" <= s[i] <= "9":
        tokens.append(Token("num", s[i], space))
        return i + 1, split_digits - 1
    m = _LATEX_THOUSANDS.match(s, i)
    if m is None and depth == 0:  # inside brackets a plain comma separates
        m = _THOUSANDS.match(s, i)
    if m is None:
        m = _NUMBER.match(s, i)
    tokens.append(Token("num", m[0].replace("\x02", ","), space))
    return m.end(), 0


def _command(s: str, i: int, tokens: list[Token], closers: list[int], space: bool,
             split_digits: int) -> tuple[int, int]:
    """Reads the command at s[i] (a backslash); returns the next index and digit splitting."""
    j = i + 1
    while j < len(s) and s[j].isalpha():
        j += 1
    name = s[i + 1:j] if j > i + 1 else s[i + 1:i + 2]
    j = max(j, i + 2)
    if name in WRAPPERS:
        k = j
        while k < len(s) and s[k] == " ":
            k += 1
        if k < len(s) and s[k] == "{":
            end = _matching_brace(s, k)
            if end < 0:
                raise LexError(f"unbalanced \\{name}")
            closers.append(end)
            return k + 1, 0
        return j, 0
    if name in _DROPPED:
        if name in ("left", "right") and j < len(s) and s[j] == ".":
            j += 1  # `\left.` is an invisible delimiter
        return j, split_digits
    if name in _OPS:
        tokens.append(Token("op", _OPS[name], space))
    elif name in _FUNCS:
        tokens.append(Token("func", name, space))
    elif name in _GREEK:
        tokens.append(Token("ident", name, space))
    elif name in _COMMANDS:
        tokens.append(Token("cmd", name, space))
        return j, _SPLIT_DIGITS.get(name, 0)
    else:
        raise LexError(f"unknown command \\{name}")
    return j, 0
