"""The answer verifier V(y, a) in {0, 1}: the last `\\boxed{...}` of a response against the gold.

Model text is never evaluated as code: answers are parsed by a small hand-written LaTeX
simplifier and anchored regular expressions without nested quantifiers, on strings whose length
is capped, so every call takes bounded time even on hostile text.

Rules (both the gold and the boxed answer go through the same normalisation):
- Box: the content of the last `\\boxed{...}` / `\\fbox{...}` whose braces balance (the one that
  closes last, so an outer box wins over a box nested inside it), searched in the last
  `RESPONSE_WINDOW` characters. `\\{` and `\\}` are literal braces and do not count.
- LaTeX: `$`, `\\left`, `\\right`, `\\displaystyle`, spacing commands (`\\,` `\\;` `\\!` `\\quad`),
  and wrappers (`\\text{}`, `\\mathrm{}`, `\\textbf{}`, `\\mathbf{}`, `\\mbox{}`, ...) are removed;
  `\\frac`, `\\dfrac`, `\\tfrac` (braced or single-token arguments, `\\dfrac12`) become `(a)/(b)`.
- An equation keeps its right-hand side: `x = 5` is `5` (also after `\\approx`).
- Numbers: integers, decimals, thousands separators in groups of three (`1,000` and `1{,}000`
  are one thousand; `1,2` is a pair), signs, fractions `a/b`. Values are exact rationals
  (`fractions.Fraction`); two numbers are equal when the rationals are equal, or, when either was
  written as a decimal, when they agree within `REL_TOL` relative (so `1/3` accepts `0.3333333`).
- Percentages: `50\\%` is the number 50 with a percent mark. With a mark on exactly one side the
  other side may give the value either way: gold `50%` accepts `50`, `50%`, `0.5` and `1/2`, and
  gold `0.5` accepts `50%`. With marks on both sides the numbers must be equal (`0.5%` != `50%`).
- Units: a number followed by a known unit (`cm`, `m^2`, `kg`, `s`, ...), by a degree mark
  (`^\\circ`, `°`, `\\degree`) or by a space and an alphabetic word of 3+ letters (`5 apples`)
  is that number. Other letters after a number are no unit (`2x` is not `2`; `2m` is).
- Multiple choice: `B`, `(B)`, `B.`, `B)`, `\\text{B}`, `Option B` are the letter B
  (case-insensitive), also `B. <option text>` when the gold is a letter. With `choices`, an
  answer equal to option i's text stands for letter i, on either side.
- Tuples: `(1, 2)` equals `(1,2)` element by element (brackets must match when both have them).
- Anything else is compared as text: case-folded, without whitespace and braces.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

RESPONSE_WINDOW = 4096
"""Only the last this-many characters of a response are searched for the box."""
MAX_ANSWER_CHARS = 256
"""A boxed answer longer than this is refused (scored 0): no real answer is that long."""
REL_TOL = 1e-6
"""Relative tolerance for comparisons where one side was written as a decimal."""
_MAX_DEPTH = 32  # LaTeX group nesting beyond this is not parsed (compared as raw text instead)

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_FRACS = {"frac", "dfrac", "tfrac", "cfrac"}
_WRAPPERS = {"text", "textrm", "textbf", "textit", "textnormal", "mathrm", "mathbf", "mathit",
             "mathsf", "mathtt", "mathnormal", "boldsymbol", "mbox", "hbox", "operatorname",
             "boxed", "fbox", "bm"}
_DROPPED = {"left", "right", "displaystyle", "textstyle", "big", "Big", "bigl", "bigr", "Bigl",
            "Bigr", ",", ";", ":", "!", " ", "quad", "qquad", "$", "space", "thinspace"}
_REPLACED = {"circ": "°", "degree": "°", "%": "%", "approx": "=", "{": "{", "}": "}",
             "cdot": "*", "times": "*", "div": "/", "neq": "!=", "ne": "!=", "le": "<=",
             "leq": "<=", "ge": ">=", "geq": ">=", "dots": "...", "ldots": "...", "cdots": "..."}
_KNOWN_UNITS = {
    "mm", "cm", "dm", "m", "km", "in", "inch", "inches", "ft", "feet", "foot", "yd", "yard",
    "yards", "mi", "mile", "miles", "g", "mg", "kg", "t", "lb", "lbs", "oz", "s", "sec", "ms",
    "min", "mins", "h", "hr", "hrs", "ml", "l", "cl", "dl", "cc", "kmh", "km/h", "m/s", "mph",
    "deg", "rad", "units", "unit", "sq", "square", "cubic", "dollars", "cents", "yuan", "euros",
    "kn", "kj", "kw", "hz", "pa", "kpa",
}
_UNIT_POWER = re.compile(r"(\^\{?[23]\}?|[²³])$")
_WORD_UNIT = re.compile(r"[A-Za-z]{3,}(?: [A-Za-z]+)?")

_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_ATOM = rf"\([-+]?(?:{_NUM})\)|(?:{_NUM})"
_NUMBER_PREFIX = re.compile(rf"(?P<sign>[-+]?)(?P<a>{_ATOM})(?:\s*/\s*(?P<b>{_ATOM}))?")
_LETTER = re.compile(r"(?:(?:option|choice|answer)\s*:?\s*)?\(?([a-z])\)?[.:)]?", re.IGNORECASE)
_LETTER_PREFIX = re.compile(r"(?:(?i:option|choice)\s*)?\(?([A-Z])(?:\)|\.|:|\)\.)\s+\S")


@dataclass(frozen=True)
class Number:
    """A parsed numeric answer: exact value, whether written as a decimal, percent mark."""

    value: Fraction
    inexact: bool
    percent: bool


# ----------------------------------------------------------------------------------- extraction


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) with balanced braces, else None.

    One forward pass over the last `RESPONSE_WINDOW` characters with a stack of open braces; the
    box that closes last wins (an outer box over one nested inside it, a later box over an
    earlier one). Whitespace between the command and its brace is allowed.
    """
    text = text[-RESPONSE_WINDOW:]
    stack: list[tuple[int, bool]] = []  # (content start, opened a box?)
    pending_box = False
    best: tuple[int, int] | None = None
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if text.startswith(_BOX_COMMANDS, i):
                pending_box = True
                i += 6 if text.startswith("\\boxed", i) else 5
                continue
            i += 2  # `\{` `\}` are literal braces; other commands never open a box
            pending_box = False
            continue
        if c == "{":
            stack.append((i + 1, pending_box))
        elif c == "}" and stack:
            start, is_box = stack.pop()
            if is_box:
                best = (start, i)
        if not c.isspace():
            pending_box = False
        i += 1
    return None if best is None else text[best[0]:best[1]]


# ------------------------------------------------------------------------- LaTeX simplification


class _TooDeep(Exception):
    pass


def _read_command(s: str, i: int) -> tuple[str, int]:
    """Name of the command whose backslash is at s[i], and the index after it."""
    j = i + 1
    while j < len(s) and s[j].isalpha():
        j += 1
    if j == i + 1:  # a one-character command such as `\,` or `\%`
        return s[i + 1:i + 2], min(i + 2, len(s))
    return s[i + 1:j], j


def _parse_arg(s: str, i: int, depth: int) -> tuple[str, int]:
    """One macro argument starting at s[i]: a braced group, a command name, or one character."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        return "", i
    if s[i] == "{":
        return _parse_seq(s, i + 1, depth + 1)
    if s[i] == "\\":
        name, j = _read_command(s, i)
        return "\\" + name, j
    return s[i], i + 1


def _parse_seq(s: str, i: int, depth: int) -> tuple[str, int]:
    """Plain text of s[i:] up to the brace closing this group (or the end), and the next index."""
    if depth > _MAX_DEPTH:
        raise _TooDeep
    out: list[str] = []
    while i < len(s):
        c = s[i]
        if c == "}" and depth > 0:
            return "".join(out), i + 1
        if c == "{":
            inner, i = _parse_seq(s, i + 1, depth + 1)
            out.append(inner)
            continue
        if c != "\\":
            out.append(c)
            i += 1
            continue
        name, i = _read_command(s, i)
        if name in _FRACS:
            a, i = _parse_arg(s, i, depth)
            b, i = _parse_arg(s, i, depth)
            out.append(f"({a})/({b})")
        elif name in _WRAPPERS:
            a, i = _parse_arg(s, i, depth)
            out.append(a)
        elif name in ("left", "right") and i < len(s) and s[i] == ".":
            i += 1  # `\left.` is an invisible delimiter
        elif name in _DROPPED:
            pass
        elif name in _REPLACED:
            out.append(_REPLACED[name])
        else:
            out.append("\\" + name)
    return "".join(out), i


def _latex_to_plain(s: str) -> str | None:
    """Plain-text form of a short LaTeX answer (see module doc), or None when nested too deep."""
    try:
        plain, _ = _parse_seq(s.replace("\\$", "").replace("$", ""), 0, 0)
    except _TooDeep:
        return None
    plain = plain.replace("\u2212", "-").replace("^°", "°")
    plain = " ".join(plain.split())
    if "=" in plain and not any(op in plain for op in ("!=", "<=", ">=")):
        plain = plain.rsplit("=", 1)[1].strip()
    return plain.rstrip(".").strip()


# ------------------------------------------------------------------------------------- parsing


def _atom_value(atom: str) -> Fraction:
    atom = atom.strip("()").replace(",", "")
    return Fraction(atom)


def _is_unit(rest: str) -> bool:
    """Whether the text after a number is a unit (see module doc); `rest` is not stripped."""
    unit = rest.strip()
    if unit in ("", "°", "%"):
        return True
    unit = _UNIT_POWER.sub("", unit).strip()
    if unit.lower() in _KNOWN_UNITS or unit.lower().removeprefix("square ") in _KNOWN_UNITS:
        return True
    return rest[:1].isspace() and _WORD_UNIT.fullmatch(unit) is not None


def parse_number(plain: str) -> Number | None:
    """The number a plain-text answer states (optionally signed, fraction, % and unit), or None.

    Text longer than `MAX_ANSWER_CHARS` is no number (this also bounds the digits converted).
    """
    s = plain.strip()
    if len(s) > MAX_ANSWER_CHARS:
        return None
    if len(s) > 2 and s[0] == "(" and s[-1] == ")" and "(" not in s[1:]:
        s = s[1:-1].strip()  # a whole answer in parentheses, `(1/2)`
    m = _NUMBER_PREFIX.match(s)
    if m is None:
        return None
    rest = s[m.end():]
    percent = rest.strip().startswith("%")
    if percent:
        rest = rest.strip()[1:]
    if not _is_unit(rest):
        return None
    value = _atom_value(m["a"])
    if m["b"] is not None:
        denominator = _atom_value(m["b"])
        if denominator == 0:
            return None
        value /= denominator
    if m["sign"] == "-":
        value = -value
    inexact = "." in m["a"] or (m["b"] is not None and "." in m["b"])
    return Number(value, inexact, percent)


def _letter(plain: str, allow_prefix: bool) -> str | None:
    """The multiple-choice letter an answer names (`B`, `(B)`, `Option B`, `B. text`), or None."""
    m = _LETTER.fullmatch(plain.strip())
    if m is not None:
        return m[1].upper()
    if allow_prefix:
        m = _LETTER_PREFIX.match(plain.strip())
        if m is not None:
            return m[1]
    return None


def canonical_text(plain: str) -> str:
    """Text form used for non-numeric comparison: case-folded, no whitespace, no braces."""
    return "".join(ch for ch in plain.casefold() if not ch.isspace() and ch not in "{}")


def _split_tuple(plain: str) -> tuple[str, list[str]] | None:
    """(bracket pair, elements) of a comma-separated list `(a, b)` / `[a, b]` / `a, b`, or None."""
    s = plain.strip()
    brackets = ""
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]":
        brackets, s = s[0] + s[-1], s[1:-1]
    if "," not in s or "(" in s or "[" in s:
        return None
    return brackets, [part.strip() for part in s.split(",")]


# ---------------------------------------------------------------------------------- comparison


def _numbers_equal(a: Number, b: Number) -> bool:
    if a.percent and b.percent or not (a.percent or b.percent):
        candidates = [(a.value, b.value)]
    else:
        pct, other = (a, b) if a.percent else (b, a)
        candidates = [(pct.value, other.value), (pct.value / 100, other.value)]
    inexact = a.inexact or b.inexact
    for x, y in candidates:
        if x == y:
            return True
        if inexact and abs(x - y) <= REL_TOL * max(abs(x), abs(y)):
            return True
    return False


def _scalars_equal(a: str, b: str) -> bool:
    na, nb = parse_number(a), parse_number(b)
    if na is not None and nb is not None:
        return _numbers_equal(na, nb)
    if (na is None) != (nb is None):
        return False
    return canonical_text(a) == canonical_text(b)


def _values_equal(a: str, b: str) -> bool:
    """Equality of two plain-text answers as numbers, tuples or text (no choice letters)."""
    if _scalars_equal(a, b):
        return True
    ta, tb = _split_tuple(a), _split_tuple(b)
    if ta is None or tb is None or len(ta[1]) != len(tb[1]):
        return False
    if ta[0] and tb[0] and ta[0] != tb[0]:
        return False
    return all(_scalars_equal(x, y) for x, y in zip(ta[1], tb[1]))


def _choice_letter(plain: str, choices: list[str] | None, allow_prefix: bool) -> str | None:
    letter = _letter(plain, allow_prefix)
    if letter is not None or not choices:
        return letter
    for i, option in enumerate(choices[:26]):
        option_plain = _latex_to_plain(option[:MAX_ANSWER_CHARS])
        if option_plain is not None and _values_equal(plain, option_plain):
            return chr(ord("A") + i)
    return None


def answers_match(answer: str, gold: str, choices: list[str] | None = None) -> bool:
    """Whether an extracted answer equals the gold under the module's rules."""
    if len(answer) > MAX_ANSWER_CHARS:
        return False
    a_plain, g_plain = _latex_to_plain(answer), _latex_to_plain(gold)
    if a_plain is None or g_plain is None:
        return answer.strip() == gold.strip()
    if not a_plain or not g_plain:
        return False
    gold_letter = _choice_letter(g_plain, choices, allow_prefix=False)
    if gold_letter is not None:
        return _choice_letter(a_plain, choices, allow_prefix=True) == gold_letter
    return _values_equal(a_plain, g_plain)


def normalize_answer(s: str) -> str:
    """Canonical string of an answer, for logs and de-duplication.

    Numbers become their reduced rational (`0.5`, `\\frac{1}{2}` -> `1/2`; `50\\%` -> `50%`),
    choice letters their upper-case letter, tuples `(x,y)` of canonical elements, other text its
    case-folded form without whitespace and braces. Equal canonical strings always verify as
    equal; `verify` additionally applies the percent rule and the decimal tolerance.
    """
    plain = _latex_to_plain(s[:MAX_ANSWER_CHARS])
    if plain is None:
        return s.strip()
    number = parse_number(plain)
    if number is not None:
        return f"{number.value}{'%' if number.percent else ''}"
    letter = _letter(plain, allow_prefix=False)
    if letter is not None:
        return letter
    parts = _split_tuple(plain)
    if parts is not None:
        return "(" + ",".join(normalize_answer(p) for p in parts[1]) + ")"
    return canonical_text(plain)


def verify(response: str, gold: str, choices: list[str] | None = None) -> float:
    """V(y, a): 1.0 when the last boxed answer of `response` equals `gold`, else 0.0.

    No box, an empty box, or a box longer than `MAX_ANSWER_CHARS` scores 0.0.
    """
    boxed = extract_boxed(response)
    if boxed is None:
        return 0.0
    return 1.0 if answers_match(boxed, gold, choices) else 0.0
