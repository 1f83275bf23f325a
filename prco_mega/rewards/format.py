"""The Solver's format score F(y) in [0, 1], and a bullet-list check for Observer captions.

F(y) is a weighted sum of rule checks (weights in `FORMAT_WEIGHTS`, summing to 1):
- `think_block`   0.3  exactly one `<think>` and one `</think>`, the opening before the closing;
- `think_nonempty` 0.1 that block holds some non-whitespace text;
- `one_box`       0.3  exactly one `\\boxed`/`\\fbox` in the response;
- `box_after_think` 0.2 there is a box and every box comes after `</think>` (needs `think_block`);
- `box_nonempty`  0.1  the last balanced box has non-whitespace content.
A response in the requested format scores 1.0; the weights put most of the score on the parts the
verifier and the Solver prompt rely on (a closed think block, a single answer).
The Observer reward has no format term (docs/algorithm.md); `observer_format_ok` exists for metrics only.
"""
from __future__ import annotations

import math

from prco_mega.rewards.verifier import extract_boxed

FORMAT_WEIGHTS: dict[str, float] = {
    "think_block": 0.3,
    "think_nonempty": 0.1,
    "one_box": 0.3,
    "box_after_think": 0.2,
    "box_nonempty": 0.1,
}
_OPEN, _CLOSE = "<think>", "</think>"
_BULLETS = ("- ", "* ", "• ", "+ ")


def format_checks(response: str, think_prefilled: bool = False) -> dict[str, bool]:
    """Each check of the format score (see module doc) on `response`.

    `think_prefilled`: the prompt already ends with `<think>` (some chat templates add it), so
    the response is read as if it began with it.
    """
    if think_prefilled:
        response = _OPEN + response
    n_open, n_close = response.count(_OPEN), response.count(_CLOSE)
    open_at, close_at = response.find(_OPEN), response.find(_CLOSE)
    think_block = n_open == 1 and n_close == 1 and open_at < close_at
    think_text = response[open_at + len(_OPEN):close_at] if think_block else ""
    box_positions = [response.find(cmd) for cmd in ("\\boxed", "\\fbox")]
    n_boxes = response.count("\\boxed") + response.count("\\fbox")
    first_box = min((p for p in box_positions if p >= 0), default=-1)
    boxed = extract_boxed(response)
    return {
        "think_block": think_block,
        "think_nonempty": bool(think_text.strip()),
        "one_box": n_boxes == 1,
        "box_after_think": think_block and first_box > close_at,
        "box_nonempty": boxed is not None and bool(boxed.strip()),
    }


def format_score(response: str, think_prefilled: bool = False) -> float:
    """F(y) = sum_c w_c * [check c passes], in [0, 1] (weights `FORMAT_WEIGHTS`)."""
    checks = format_checks(response, think_prefilled)
    # fsum: the weights are decimal fractions; a plain sum of all five gives 0.9999999999999999
    return math.fsum(FORMAT_WEIGHTS[name] for name, ok in checks.items() if ok)


def observer_format_ok(caption: str) -> bool:
    """Whether a caption is a bullet list without an answer box (for metrics, not the reward).

    True when the caption has at least one bullet line (`- `, `* `, `• `, `+ ` or `1. `/`1) `),
    at least half of its non-empty lines are bullets, and it contains no `\\boxed`/`\\fbox`.
    """
    lines = [line.strip() for line in caption.splitlines() if line.strip()]
    n_bullets = sum(_is_bullet(line) for line in lines)
    has_box = "\\boxed" in caption or "\\fbox" in caption
    return n_bullets >= 1 and 2 * n_bullets >= len(lines) and not has_box


def _is_bullet(line: str) -> bool:
    if line.startswith(_BULLETS):
        return True
    digits = len(line) - len(line.lstrip("0123456789"))
    return 0 < digits <= 3 and line[digits:digits + 2] in (". ", ") ")
