"""Multiple-choice answers: which option letters an answer names.

Spellings of one letter: `B`, `b`, `(B)`, `[B]`, `B.`, `B)`, `B:`, `\\text{B}`, `**B**`,
`Option B`, `option (B)`, `Choice: B`, `Answer: B`, `The answer is B`, and a letter followed by
its option text (`(B) 12 cm`, `B. 12 cm`, `B: 12 cm`) when that text names no other option.
Several letters (multi-select): `A, C`, `A and C`, `(A) and (C)`, `(A)(C)`, `A C`, `A; C`, and
`AC` written without separators when the letters are in alphabetical order (so `BAC`, an angle,
is not read as three options). Letters are compared as sets: `A, C` equals `AC` and `C, A`, and
`(B) and (C)` is never `B`. Only single letters may be lower case (`b`); `ac` is a product.
Every function here is a fixed number of anchored regular expressions without nested
quantifiers over a string the verifier has capped, so the cost is linear in its length.
"""
from __future__ import annotations

import re

_MARKUP = re.compile(
    r"\\(?:text|textbf|textrm|textit|mathrm|mathbf|mathit|boxed|fbox|mbox|textsf|mathsf|"
    r"textnormal|operatorname|underline|emph|overline|overrightarrow|vec)\s*\{|\\(?:left|right|displaystyle)|\\[,;:! ]|"
    r"[{}$*]|\\quad|\\qquad")
_LEAD = re.compile(r"(?:the )?(?:correct |final )?(?:answer|option|choice)s?(?: is| are)? ?:? ?",
                   re.IGNORECASE)
_SINGLE = re.compile(r"\(([A-Za-z])\)\.?|\[([A-Za-z])\]|([A-Za-z])[.:)]?")
_ITEM = r"(?:\([A-Z]\)|\[[A-Z]\]|[A-Z]\.?)"
_MULTI = re.compile(rf"{_ITEM}(?:(?: ?[,;/&+] ?(?:and )?| and | ?){_ITEM})+")
_SEPARATED = re.compile(r"[\s,;/&+()\[\].]|and")
_WITH_TEXT = re.compile(r"(?:\(([A-Z])\)\.?|([A-Z])[.:)])\s+(\S.*)", re.DOTALL)
_OTHER_OPTION = re.compile(r"\([A-Z]\)|(?:^|\s)[A-Z][.:)](?:\s|$)")


def plain_choice_text(text: str) -> str:
    """`text` without LaTeX/markdown markup and answer lead-ins (`Answer:`, `Option`)."""
    s = " ".join(_MARKUP.sub(" ", text).split()).rstrip(".").strip()
    m = _LEAD.match(s)
    if m is not None and m.end() < len(s):
        s = s[m.end():].strip()
    return s


def choice_letters(text: str) -> frozenset[str] | None:
    """The set of option letters `text` names (module doc), or None when it names none."""
    s = plain_choice_text(text)
    m = _SINGLE.fullmatch(s)
    if m is not None:
        return frozenset((m[1] or m[2] or m[3]).upper())
    if _MULTI.fullmatch(s):
        letters = re.findall("[A-Z]", s.replace("and", " "))
        if _SEPARATED.search(s) is None and letters != sorted(set(letters)):
            return None  # `BAC` is a name, not three options
        return frozenset(letters)
    m = _WITH_TEXT.fullmatch(s)
    if m is not None and _OTHER_OPTION.search(m[3]) is None:
        return frozenset(m[1] or m[2])
    return None
