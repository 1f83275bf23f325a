"""Values of parsed expressions: exact where possible, otherwise numeric at fixed sample points.

Exact values are forms  sum_k c_k * pi^a_k * e^b_k * sqrt(r_k)  with rational c_k and square-free
integers r_k >= 1, stored as a dict {(a, b, r): c}. Equal dicts mean equal numbers, and for
answers built from rationals, square roots and pi different dicts mean different numbers (square
roots of distinct square-free integers are linearly independent over the rationals and pi is
transcendental), so `\\sqrt{12}` = `2\\sqrt{3}`, `\\frac{\\pi}{2}` = `\\pi/2`,
`\\frac{1}{\\sqrt{2}}` = `\\frac{\\sqrt{2}}{2}` and `1.5\\times10^{3}` = `1500` are decided
exactly. Anything outside that set (a cube root of 2, `sin`, `log`, a variable, a form over the
size limits below) raises `NotExact` and is evaluated in floating point instead: a variable-free
expression once, an expression with variables at `len(POINTS)` fixed points. Nothing here runs
model text: the evaluator walks the parser's tuples and calls `math` functions by a fixed table.

AST nodes (built by `mathparse`): ("num", Fraction, literal) ("const", "pi"|"e") ("var", name)
("inf",) ("add", (x, ...)) ("mul", (x, ...)) ("neg", x) ("div", x, y) ("pow", x, y)
("root", x, n) ("func", name, x) ("log", x, base) ("fact", x) ("abs", x) ("binom", n, k)
("deg", x) ("pct", x).
"""
from __future__ import annotations

import math
from fractions import Fraction

from prco_mega.rewards.mathlex import Budget

Form = dict  # {(pi_power, e_power, radicand): Fraction}

MAX_TERMS = 24
MAX_BITS = 2048
"""A coefficient with a longer numerator or denominator is not kept exactly."""
MAX_EXPONENT = 256
"""Integer powers beyond this are not expanded exactly."""
_MAX_RADICAND = 10**9  # square-free splitting below this is exact with trial division to 1000
REL_TOL = 1e-9
"""Relative tolerance of floating-point comparisons (exact forms are compared exactly)."""
ABS_TOL = 1e-12
POINTS = (0.6180339887, 1.4142135624, 2.7182818285, -0.8660254038, 3.3166247904,
          0.3183098862, -1.7320508076, 1.2599210499)
"""Values given to free variables; variable k at point j takes POINTS[(j + 3k) % 8] + 0.0123k."""

ONE: Form = {(0, 0, 1): Fraction(1)}
"""The form of 1; shared, never mutated (every operation builds a new dict)."""


class NotExact(Exception):
    """The expression has no exact form here; it is compared numerically."""


class Invalid(Exception):
    """The expression has no real value at this point (division by zero, log of -1, ...)."""


# ------------------------------------------------------------------------------ exact forms


def _checked(form: Form) -> Form:
    if len(form) > MAX_TERMS:
        raise NotExact
    for c in form.values():
        if c.numerator.bit_length() > MAX_BITS or c.denominator.bit_length() > MAX_BITS:
            raise NotExact
    return form


def rational(q: Fraction) -> Form:
    return {(0, 0, 1): q} if q else {}


def f_add(x: Form, y: Form, budget: Budget) -> Form:
    budget.tick(len(y))
    out = dict(x)
    for k, c in y.items():
        s = out.get(k, 0) + c
        if s:
            out[k] = s
        else:
            out.pop(k, None)
    return _checked(out)


def f_neg(x: Form) -> Form:
    return {k: -c for k, c in x.items()}


def f_mul(x: Form, y: Form, budget: Budget) -> Form:
    if y is ONE or x is ONE:  # unit and percent scales are mostly one: skip the arithmetic
        return x if y is ONE else y
    budget.tick(len(x) * len(y))
    out: Form = {}
    for (a1, b1, r1), c1 in x.items():
        for (a2, b2, r2), c2 in y.items():
            g = math.gcd(r1, r2)  # sqrt(r1) sqrt(r2) = g sqrt(r1 r2 / g^2), still square-free
            key = (a1 + a2, b1 + b2, (r1 // g) * (r2 // g))
            s = out.get(key, 0) + c1 * c2 * g
            if s:
                out[key] = s
            else:
                out.pop(key, None)
    return _checked(out)


def f_inv(x: Form, budget: Budget) -> Form:
    """1/x for one term, or for two terms over the same power of pi and e (a conjugate)."""
    if len(x) == 1:
        ((a, b, r), c), = x.items()
        return {(-a, -b, r): 1 / (c * r)}
    if len(x) == 2:
        (k1, c1), (k2, c2) = x.items()
        if k1[:2] == k2[:2]:
            conj = {k1: c1, k2: -c2}
            norm = f_mul(x, conj, budget)  # c1^2 r1 - c2^2 r2 times pi^2a e^2b: one term
            if len(norm) == 1:
                return f_mul(conj, f_inv(norm, budget), budget)
    raise NotExact


def square_free(n: int, budget: Budget) -> tuple[int, int]:
    """(s, r) with n = s^2 r and r square-free, for 1 <= n < 10^9 (else NotExact)."""
    if n >= _MAX_RADICAND:
        raise NotExact
    s, r, p = 1, n, 2
    while p * p <= r and p <= 1000:
        budget.tick()
        while r % (p * p) == 0:
            r //= p * p
            s *= p
        p += 1 if p == 2 else 2
    # A cofactor with no prime factor up to 1000 and below 10^9 is square-free or a prime squared.
    root = math.isqrt(r)
    if root > 1 and root * root == r:
        return s * root, 1
    return s, r


def _sqrt(x: Form, budget: Budget) -> Form:
    if not x:
        return {}
    if len(x) != 1:
        raise NotExact
    ((a, b, r), c), = x.items()
    if a % 2 or b % 2 or r != 1 or c < 0:
        raise NotExact
    s, rad = square_free(c.numerator * c.denominator, budget)
    return {(a // 2, b // 2, rad): Fraction(s, c.denominator)}


def _nth_root(x: Form, n: int, budget: Budget) -> Form:
    q = as_rational(x)
    if q is None or n < 2 or n > 64:
        raise NotExact
    budget.tick(n)
    sign = -1 if q < 0 else 1
    if sign < 0 and n % 2 == 0:
        raise NotExact
    num, den = _int_root(abs(q.numerator), n), _int_root(q.denominator, n)
    if num is None or den is None:
        raise NotExact
    return rational(Fraction(sign * num, den))


def _int_root(m: int, n: int) -> int | None:
    if m.bit_length() > MAX_BITS:
        return None
    guess = round(m ** (1.0 / n)) if m.bit_length() < 1000 else None
    if guess is None:
        return None
    for cand in (guess - 1, guess, guess + 1):
        if cand >= 0 and cand ** n == m:
            return cand
    return None


def f_pow(x: Form, e: Form, budget: Budget) -> Form:
    q = as_rational(e)
    if q is None:
        raise NotExact
    if q.denominator == 1:
        n = q.numerator
        if abs(n) > MAX_EXPONENT or (len(x) > 1 and abs(n) > 16):
            raise NotExact
        if n < 0:
            return f_pow(f_inv(x, budget), rational(Fraction(-n)), budget)
        out, base = ONE, x
        while n:
            if n & 1:
                out = f_mul(out, base, budget)
            n >>= 1
            if n:
                base = f_mul(base, base, budget)
        return out
    root = _sqrt(x, budget) if q.denominator == 2 else _nth_root(x, q.denominator, budget)
    return f_pow(root, rational(Fraction(q.numerator)), budget)


def as_rational(x: Form) -> Fraction | None:
    if not x:
        return Fraction(0)
    if len(x) == 1 and (0, 0, 1) in x:
        return x[(0, 0, 1)]
    return None


def form_float(x: Form) -> float:
    total = 0.0
    for (a, b, r), c in x.items():
        try:
            total += float(c) * math.pi ** a * math.e ** b * math.sqrt(r)
        except OverflowError:
            return math.inf if c > 0 else -math.inf
    return total


def exact(node: tuple, budget: Budget) -> Form:
    """The exact form of a node (module doc); raises `NotExact`."""
    budget.tick()
    kind = node[0]
    if kind == "num":
        return rational(node[1])
    if kind == "const":
        return {(1, 0, 1) if node[1] == "pi" else (0, 1, 1): Fraction(1)}
    if kind == "add":
        out: Form = {}
        for child in node[1]:
            out = f_add(out, exact(child, budget), budget)
        return out
    if kind == "mul":
        out = ONE
        for child in node[1]:
            out = f_mul(out, exact(child, budget), budget)
        return out
    if kind == "neg":
        return f_neg(exact(node[1], budget))
    if kind == "div":
        den = exact(node[2], budget)
        if not den:
            raise NotExact
        return f_mul(exact(node[1], budget), f_inv(den, budget), budget)
    return _exact_special(node, budget)


def _exact_special(node: tuple, budget: Budget) -> Form:
    kind = node[0]
    if kind == "pow":
        base, e = exact(node[1], budget), exact(node[2], budget)
        if not base:
            raise NotExact  # 0^e: leave 0^0 and 0^-1 to the numeric path
        return f_pow(base, e, budget)
    if kind == "root":
        inner = exact(node[1], budget)
        return _sqrt(inner, budget) if node[2] == 2 else _nth_root(inner, node[2], budget)
    if kind in ("fact", "binom"):
        args = [as_rational(exact(child, budget)) for child in node[1:]]
        if any(a is None or a.denominator != 1 or not 0 <= a <= 300 for a in args):
            raise NotExact
        budget.tick(int(args[0]))
        n = int(args[0])
        return rational(Fraction(math.factorial(n) if kind == "fact" else math.comb(n, int(args[1]))))
    if kind == "abs":
        inner = exact(node[1], budget)
        return f_neg(inner) if form_float(inner) < 0 else inner
    if kind == "deg":
        return f_mul(exact(node[1], budget), {(1, 0, 1): Fraction(1, 180)}, budget)
    if kind == "pct":
        return f_mul(exact(node[1], budget), rational(Fraction(1, 100)), budget)
    raise NotExact  # var, inf, func, log


def exact_or_none(node: tuple, budget: Budget) -> Form | None:
    try:
        return exact(node, budget)
    except (NotExact, ZeroDivisionError, ValueError, OverflowError):
        return None


# --------------------------------------------------------------------------------- numeric

_FUNCS = {
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "cot": lambda x: 1 / math.tan(x),
    "sec": lambda x: 1 / math.cos(x), "csc": lambda x: 1 / math.sin(x), "arcsin": math.asin,
    "arccos": math.acos, "arctan": math.atan, "sinh": math.sinh, "cosh": math.cosh,
    "tanh": math.tanh, "exp": math.exp, "ln": math.log,
}


def numeric(node: tuple, env: dict[str, float], budget: Budget) -> float:
    """Float value of a node with variables from `env`; raises `Invalid` off the domain."""
    budget.tick()
    try:
        value = _numeric(node, env, budget)
    except (ArithmeticError, ValueError):  # math domain errors, overflow, division by zero
        raise Invalid from None
    if isinstance(value, complex) or value != value:
        raise Invalid
    return value


def _numeric(node: tuple, env: dict[str, float], budget: Budget) -> float:
    kind = node[0]
    if kind == "num":
        return float(node[1])
    if kind == "const":
        return math.pi if node[1] == "pi" else math.e
    if kind == "var":
        if node[1] not in env:
            raise Invalid
        return env[node[1]]
    if kind == "inf":
        return math.inf
    if kind == "add":
        return math.fsum(numeric(c, env, budget) for c in node[1])
    if kind == "mul":
        return math.prod(numeric(c, env, budget) for c in node[1])
    if kind == "neg":
        return -numeric(node[1], env, budget)
    if kind == "div":
        return numeric(node[1], env, budget) / numeric(node[2], env, budget)
    if kind == "pow":
        base, e = numeric(node[1], env, budget), numeric(node[2], env, budget)
        if abs(e) > 10_000:
            raise Invalid
        return base ** e
    return _numeric_special(node, env, budget)


def _numeric_special(node: tuple, env: dict[str, float], budget: Budget) -> float:
    kind = node[0]
    if kind == "root":
        x, n = numeric(node[1], env, budget), node[2]
        if x < 0 and n % 2:
            return -((-x) ** (1 / n))
        return x ** (1 / n)
    if kind == "func":
        return _FUNCS[node[1]](numeric(node[2], env, budget))
    if kind == "log":
        return math.log(numeric(node[1], env, budget), numeric(node[2], env, budget))
    if kind == "abs":
        return abs(numeric(node[1], env, budget))
    if kind == "deg":
        return numeric(node[1], env, budget) * math.pi / 180
    if kind == "pct":
        return numeric(node[1], env, budget) / 100
    if kind in ("fact", "binom"):
        try:
            return form_float(exact(node, budget))
        except NotExact:  # a non-integer or huge factorial has no value here
            raise Invalid from None
    raise Invalid


# ---------------------------------------------------------------------------- node queries


def free_vars(node: tuple) -> frozenset[str]:
    """Names of the variables in a node."""
    if node[0] == "var":
        return frozenset((node[1],))
    names: set[str] = set()
    for child in _children(node):
        names |= free_vars(child)
    return frozenset(names)


def _children(node: tuple) -> tuple:
    kind = node[0]
    if kind in ("add", "mul"):
        return node[1]
    if kind in ("num", "const", "var", "inf"):
        return ()
    if kind in ("func",):
        return (node[2],)
    if kind == "root":
        return (node[1],)
    return tuple(c for c in node[1:] if isinstance(c, tuple))


def has_decimal(node: tuple) -> bool:
    """Whether a numeral written with a decimal point or an exponent occurs in the node."""
    if node[0] == "num":
        return not node[2].replace(",", "").isdigit()
    return any(has_decimal(c) for c in _children(node))


def env_at(names: frozenset[str], j: int) -> dict[str, float]:
    """Values of the variables `names` (sorted) at sample point j (see `POINTS`)."""
    return {name: POINTS[(j + 3 * k) % len(POINTS)] + 0.0123 * k
            for k, name in enumerate(sorted(names))}


def close(x: float, y: float) -> bool:
    if x == y:
        return True
    if not (math.isfinite(x) and math.isfinite(y)):
        return False
    return abs(x - y) <= REL_TOL * max(abs(x), abs(y)) + ABS_TOL
