"""Equivalence of parsed answers (`mathparse` items), under the rules `verifier` documents.

Every function here is symmetric in its two answers, charges its work to the caller's `Budget`,
and answers False whenever it cannot show equality: an unknown construct, a value off its
domain, or a comparison it has no rule for is "not equal", never "equal".
"""
from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

from prco_mega.rewards.mathlex import Budget
from prco_mega.rewards.mathparse import UNCOMPUTED, Collection, Item, Quantity, Relation, Text
from prco_mega.rewards.mathvalue import (
    ONE,
    POINTS,
    Form,
    Invalid,
    as_rational,
    close,
    env_at,
    exact_or_none,
    f_mul,
    form_float,
    free_vars,
    has_decimal,
    numeric,
    rational,
)
from prco_mega.rewards.units import Unit

MAX_ITEMS = 32
"""Collections with more elements than this are not compared (not equal)."""
MIN_POINTS = 3
"""Expressions with variables must agree at this many sample points where both are defined."""
_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "=": "=", "!=": "!=", "~=": "~=", "in": ""}
_ANGLE = (("A", 1),)


def items_equal(a: Item, b: Item, budget: Budget) -> bool:
    """Whether two parsed answers are the same value (see the verifier's module doc)."""
    budget.tick()
    if isinstance(a, Text) or isinstance(b, Text):
        return isinstance(a, Text) and isinstance(b, Text) and a.text == b.text
    if isinstance(a, Relation) and isinstance(b, Relation):
        return _relations_equal(a, b, budget)
    if isinstance(a, Relation) or isinstance(b, Relation):
        rel, other = (a, b) if isinstance(a, Relation) else (b, a)
        value = assigned_value(rel)
        if value is None:
            value = solution_set(rel) if isinstance(other, Collection) else None
        return value is not None and items_equal(value, other, budget)
    a, b = solution_set(a) or a, solution_set(b) or b
    if isinstance(a, Collection) or isinstance(b, Collection):
        return isinstance(a, Collection) and isinstance(b, Collection) and \
            _collections_equal(a, b, budget)
    return quantities_equal(a, b, budget)


def with_forms(item: Item, budget: Budget) -> Item:
    """`item` with the exact forms of its quantities computed, for a gold compared many times."""
    if isinstance(item, Quantity):
        return replace(item, form=exact_or_none(item.expr, budget))
    if isinstance(item, Relation):
        return Relation(tuple(with_forms(s, budget) for s in item.sides), item.ops)
    if isinstance(item, Collection):
        return replace(item, items=tuple(with_forms(x, budget) for x in item.items))
    return item


# ------------------------------------------------------------------------------- relations


def assigned_value(rel: Relation) -> Item | None:
    """The value of `label = value` (`x = 5`, `AB \\approx 3.2`, `x \\in (1, 2)`, `f(x) = 2x`).

    Only a bare label on the left and, unless the label is a function `f(x)`, a right side
    without variables: `x^2 = 5` or `y = 2x + 1` are relations, never their right side.
    """
    if len(rel.sides) != 2 or rel.ops[0] not in ("=", "~=", "in"):
        return None
    label, value = rel.sides
    if not (isinstance(label, Quantity) and label.expr[0] == "var" and label.unit is None):
        return None
    if "(" in label.expr[1] or _is_constant(value):
        return value
    return None


def solution_set(item: Item) -> Collection | None:
    """An inequality in one label as its interval (`1 < x \\le 3` -> `(1, 3]`, `x > 2` ->
    `(2, \\infty)`), and a list of those joined by `or` as their union; else None."""
    if isinstance(item, Collection) and item.kind == "list" and item.open == "or":
        parts = [solution_set(x) for x in item.items]
        if all(p is not None and p.kind == "tuple" for p in parts):
            return Collection("union", "", "", tuple(parts))
        return None
    if not isinstance(item, Relation) or not set(item.ops) <= {"<", "<=", ">", ">="}:
        return None
    sides, ops = item.sides, item.ops
    if all(op in (">", ">=") for op in ops):
        sides, ops = sides[::-1], tuple(_FLIP[op] for op in reversed(ops))
    if not all(op in ("<", "<=") for op in ops) or not all(isinstance(s, Quantity) for s in sides):
        return None
    kinds = ["label" if _is_label(s) else "value" if _is_constant(s) else "" for s in sides]
    low, high = Quantity(("neg", ("inf",))), Quantity(("inf",))
    if kinds == ["value", "label", "value"]:
        bounds, closed = (sides[0], sides[2]), (ops[0] == "<=", ops[1] == "<=")
    elif kinds == ["label", "value"]:
        bounds, closed = (low, sides[1]), (False, ops[0] == "<=")
    elif kinds == ["value", "label"]:
        bounds, closed = (sides[0], high), (ops[0] == "<=", False)
    else:
        return None
    return Collection("tuple", "[" if closed[0] else "(", "]" if closed[1] else ")", bounds)


def _is_label(item: Quantity) -> bool:
    return item.expr[0] == "var" and item.unit is None


def _is_constant(item: Item) -> bool:
    if isinstance(item, Quantity):
        return not free_vars(item.expr)
    if isinstance(item, Collection):
        return all(_is_constant(x) for x in item.items)
    return False


def _relations_equal(a: Relation, b: Relation, budget: Budget) -> bool:
    if len(a.sides) != len(b.sides):
        return False
    if a.ops == b.ops and _sides_equivalent(a.sides, b.sides, a.ops, budget):
        return True
    flipped = tuple(_FLIP[op] for op in reversed(b.ops))
    return flipped == a.ops and _sides_equivalent(a.sides, b.sides[::-1], a.ops, budget)


def _sides_equivalent(sa: tuple, sb: tuple, ops: tuple, budget: Budget) -> bool:
    """Side by side equal, or (two sides, no units) lhs - rhs proportional with a constant
    factor, positive for an inequality: `2x + 2y = 2` is `x + y = 1`, `2x > 6` is `x > 3`."""
    if all(items_equal(x, y, budget) for x, y in zip(sa, sb)):
        return True
    if len(sa) != 2 or not all(isinstance(s, Quantity) and s.unit is None and not s.percent
                               for s in (*sa, *sb)):
        return False
    f = ("add", (sa[0].expr, ("neg", sa[1].expr)))
    g = ("add", (sb[0].expr, ("neg", sb[1].expr)))
    return _proportional(f, g, ops[0] not in ("=", "!=", "~="), budget)


def _proportional(f: tuple, g: tuple, positive: bool, budget: Budget) -> bool:
    pairs = _paired_values(f, g, budget)
    if not pairs or not (free_vars(f) | free_vars(g)):
        return False
    ratios = []
    for fx, gx in pairs:
        if close(fx, 0.0) or close(gx, 0.0):
            if not (close(fx, 0.0) and close(gx, 0.0)):
                return False
        else:
            ratios.append(fx / gx)
    return len(ratios) >= MIN_POINTS and all(close(r, ratios[0]) for r in ratios) and \
        (ratios[0] > 0 or not positive)


def _paired_values(a: tuple, b: tuple, budget: Budget) -> list[tuple[float, float]] | None:
    """(a, b) at every sample point where both are defined; None when only one of them is."""
    names = free_vars(a) | free_vars(b)
    pairs = []
    for j in range(len(POINTS)):
        env = env_at(names, j)
        x, y = _value_at(a, env, budget), _value_at(b, env, budget)
        if (x is None) != (y is None):
            return None
        if x is not None:
            pairs.append((x, y))
    return pairs


def _value_at(node: tuple, env: dict[str, float], budget: Budget) -> float | None:
    try:
        return numeric(node, env, budget)
    except Invalid:
        return None


# ----------------------------------------------------------------------------- collections


def _collections_equal(a: Collection, b: Collection, budget: Budget) -> bool:
    """Tuples and intervals: ordered, same brackets. Sets: order and repeats free. Bare lists:
    order-free against lists and sets, in order against a tuple. Unions: order-free parts."""
    if len(a.items) > MAX_ITEMS or len(b.items) > MAX_ITEMS:
        return False
    if a.kind == "union" or b.kind == "union":
        return a.kind == b.kind and _multiset_equal(a.items, b.items, budget)
    kinds = {a.kind, b.kind}
    if kinds == {"tuple"}:
        return (a.open, a.close) == (b.open, b.close) and _ordered_equal(a.items, b.items, budget)
    if kinds == {"tuple", "list"}:
        listed, ordered = (a, b) if a.kind == "list" else (b, a)
        return _ordered_equal(ordered.items, _by_label(listed.items), budget)
    if "set" in kinds and "tuple" not in kinds:
        return _set_equal(a.items, b.items, budget)
    if kinds == {"list"}:
        return _multiset_equal(a.items, b.items, budget)
    return False


def _by_label(items: tuple) -> tuple:
    """`y = 2, x = 1` in label order (x, y), to meet a tuple `(1, 2)`; other lists as written."""
    labels = [x.sides[0].expr[1] if isinstance(x, Relation) and assigned_value(x) is not None
              else None for x in items]
    if None in labels or len(set(labels)) != len(labels):
        return items
    return tuple(x for _, x in sorted(zip(labels, items), key=lambda pair: pair[0]))


def _ordered_equal(xs: tuple, ys: tuple, budget: Budget) -> bool:
    return len(xs) == len(ys) and all(items_equal(x, y, budget) for x, y in zip(xs, ys))


def _multiset_equal(xs: tuple, ys: tuple, budget: Budget) -> bool:
    """A perfect matching between xs and ys under `items_equal` (augmenting paths), so the
    answer does not depend on which side is the gold."""
    if len(xs) != len(ys):
        return False
    equal = [[items_equal(x, y, budget) for y in ys] for x in xs]
    owner: list[int | None] = [None] * len(ys)  # owner[j]: the x matched to y j

    def augment(i: int, seen: set[int]) -> bool:
        for j, ok in enumerate(equal[i]):
            if ok and j not in seen:
                seen.add(j)
                budget.tick()
                if owner[j] is None or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return all(augment(i, set()) for i in range(len(xs)))


def _set_equal(xs: tuple, ys: tuple, budget: Budget) -> bool:
    return all(any(items_equal(x, y, budget) for y in ys) for x in xs) and \
        all(any(items_equal(y, x, budget) for x in xs) for y in ys)


# ------------------------------------------------------------------------------ quantities


def quantities_equal(a: Quantity, b: Quantity, budget: Budget) -> bool:
    """Values equal after units and percent marks (verifier module doc, "Units", "Percent")."""
    for ua, ub in _unit_scales(a, b):
        for pa, pb in _percent_scales(a, b):
            if same_value(a.expr, b.expr, f_mul(ua, pa, budget), f_mul(ub, pb, budget), budget,
                          a.form, b.form):
                return True
    return False


def _unit_form(unit: Unit) -> Form:
    return {(unit.pi_power, 0, 1): unit.factor}


def _unit_scales(a: Quantity, b: Quantity) -> list[tuple[Form, Form]]:
    if a.unit is None and b.unit is None or a.unit == b.unit:
        return [(ONE, ONE)]
    if a.unit is not None and b.unit is not None:
        return [(_unit_form(a.unit), _unit_form(b.unit))] if a.unit.dims == b.unit.dims else []
    # A bare number is read in the other side's unit; an angle written with pi reads as radians.
    unit, bare = (a.unit, b) if a.unit is not None else (b.unit, a)
    scales = [(ONE, ONE)]
    if unit.dims == _ANGLE and _mentions_pi(bare.expr):
        scales.append((_unit_form(unit), ONE) if a.unit is not None else (ONE, _unit_form(unit)))
    return scales


def _mentions_pi(node: tuple) -> bool:
    return node == ("const", "pi") or any(
        isinstance(c, tuple) and _mentions_pi(c)
        for c in (node[1] if node[0] in ("add", "mul") else node[1:]))


def _percent_scales(a: Quantity, b: Quantity) -> list[tuple[Form, Form]]:
    if a.percent == b.percent:
        return [(ONE, ONE)]
    hundredth = rational(Fraction(1, 100))
    return [(ONE, ONE), (hundredth, ONE) if a.percent else (ONE, hundredth)]


def same_value(a: tuple, b: tuple, sa: Form, sb: Form, budget: Budget,
               fa: object = UNCOMPUTED, fb: object = UNCOMPUTED) -> bool:
    """Whether a * sa equals b * sb: exactly when both have exact forms, else in floating point
    (at sample points when there are variables); plus the decimal rounding rule. `fa`, `fb`:
    the exact forms of a and b when already known."""
    fa = exact_or_none(a, budget) if fa is UNCOMPUTED else fa
    fb = exact_or_none(b, budget) if fb is UNCOMPUTED else fb
    if fa is not None and fb is not None:
        xa, xb = f_mul(fa, sa, budget), f_mul(fb, sb, budget)
        return xa == xb or _rounds_to(a, xa, sa, b, xb) or _rounds_to(b, xb, sb, a, xa)
    names = free_vars(a) | free_vars(b)
    if names:
        return _agree_at_points(a, b, form_float(sa), form_float(sb), budget)
    x, y = _value_at(a, {}, budget), _value_at(b, {}, budget)
    if x is None or y is None:
        return False
    x, y = x * form_float(sa), y * form_float(sb)
    return close(x, y) or _rounds_to(a, x, sa, b, y) or _rounds_to(b, y, sb, a, x)


def _agree_at_points(a: tuple, b: tuple, sa: float, sb: float, budget: Budget) -> bool:
    pairs = _paired_values(a, b, budget)
    return pairs is not None and len(pairs) >= MIN_POINTS and \
        all(close(x * sa, y * sb) for x, y in pairs)


def decimal_places(node: tuple) -> tuple[int, int] | None:
    """(decimal places, significant digits) of a plain decimal numeral such as `-1.41`."""
    if node[0] == "neg":
        node = node[1]
    if node[0] != "num" or "." not in node[2] or not node[2].replace(".", "").isdigit():
        return None
    places = len(node[2].split(".")[1])
    return places, len(node[2].replace(".", "").lstrip("0"))


def _rounds_to(lit: tuple, x_lit, s_lit: Form, other: tuple, x_other) -> bool:
    """The rounding rule: a decimal numeral with d places (d >= 2, or d >= 1 against an
    irrational value) and 2+ significant digits equals an exact value, or a decimal numeral
    with more places, that rounds to it."""
    info = decimal_places(lit)
    if info is None:
        return False
    places, significant = info
    if has_decimal(other):  # only a longer decimal may round to a shorter one
        longer = decimal_places(other)
        if longer is None or longer[0] <= places:
            return False
    q_lit, q_other = _as_rational(x_lit), _as_rational(x_other)
    irrational = q_other is None
    if significant < 2 or places < (1 if irrational else 2):
        return False
    half = Fraction(5, 10 ** (places + 1))
    scale = as_rational(s_lit)
    if q_lit is not None and q_other is not None and scale is not None:
        return abs(q_lit - q_other) <= half * abs(scale)
    y_lit, y_other = _as_float(x_lit), _as_float(x_other)
    return abs(y_lit - y_other) <= float(half) * abs(form_float(s_lit)) * (1 + 1e-9)


def _as_rational(x) -> Fraction | None:
    return as_rational(x) if isinstance(x, dict) else None


def _as_float(x) -> float:
    return form_float(x) if isinstance(x, dict) else x
