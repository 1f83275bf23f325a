"""Units of measure as part of an answer's value: a scale to a base unit and a dimension.

A `Unit` is `factor * pi**pi_power` base units of dimension `dims` (a sorted tuple of
`(base, exponent)`). Bases: `L` length (metre), `M` mass (kilogram), `T` time (second), `A` angle
(radian; a degree is pi/180), `U` the generic "unit" of geometry problems ("square units"),
one base per currency (`USD`, `CNY`, `EUR`, `GBP`, `JPY`, `INR`; never converted into each
other), and a few physical units kept as their own bases (`N`, `J`, `W`, `Pa`, `Hz`, `V`).
So `cm^2` is area, `km/h` is speed, and `50 cm` equals `0.5 m` while `5 m` never equals `5 cm`.

`parse_unit(tokens)` reads a unit phrase (`cm^2`, `\\text{cm}^{2}`, `square meters`,
`m/s^2`, `km per hour`, `^\\circ`, `dollars`) and returns None for anything else; it looks at
each token once.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from prco_mega.rewards.mathlex import Token


@dataclass(frozen=True, slots=True)
class Unit:
    """`factor * pi**pi_power` base units of dimension `dims`."""

    factor: Fraction
    pi_power: int
    dims: tuple[tuple[str, int], ...]

    def __mul__(self, other: Unit) -> Unit:
        return Unit(self.factor * other.factor, self.pi_power + other.pi_power,
                    _merge(self.dims, other.dims, 1))

    def __truediv__(self, other: Unit) -> Unit:
        return Unit(self.factor / other.factor, self.pi_power - other.pi_power,
                    _merge(self.dims, other.dims, -1))

    def __pow__(self, n: int) -> Unit:
        return Unit(self.factor ** n, self.pi_power * n, tuple((b, e * n) for b, e in self.dims))


def _merge(a: tuple, b: tuple, sign: int) -> tuple[tuple[str, int], ...]:
    exps = dict(a)
    for base, e in b:
        exps[base] = exps.get(base, 0) + sign * e
    return tuple(sorted((k, v) for k, v in exps.items() if v))


def _u(factor: str | int, base: str, pi_power: int = 0) -> Unit:
    return Unit(Fraction(factor), pi_power, ((base, 1),))


def _names(unit: Unit, *names: str) -> dict[str, Unit]:
    return dict.fromkeys(names, unit)


DEGREE = _u("1/180", "A", 1)
UNITS: dict[str, Unit] = {
    **_names(_u("1/1000", "L"), "mm", "millimeter", "millimeters", "millimetre", "millimetres",
             "毫米"),
    **_names(_u("1/100", "L"), "cm", "centimeter", "centimeters", "centimetre", "centimetres",
             "厘米"),
    **_names(_u("1/10", "L"), "dm", "decimeter", "decimeters", "decimetre", "decimetres"),
    **_names(_u(1, "L"), "m", "meter", "meters", "metre", "metres", "米"),
    **_names(_u(1000, "L"), "km", "kilometer", "kilometers", "kilometre", "kilometres", "千米",
             "公里"),
    **_names(_u("0.0254", "L"), "in", "inch", "inches"),
    **_names(_u("0.3048", "L"), "ft", "feet", "foot"),
    **_names(_u("0.9144", "L"), "yd", "yard", "yards"),
    **_names(_u("1609.344", "L"), "mi", "mile", "miles"),
    **_names(_u(1, "U"), "unit", "units"),
    **_names(_u("1/1000000", "M"), "mg", "milligram", "milligrams"),
    **_names(_u("1/1000", "M"), "g", "gram", "grams", "gm", "克"),
    **_names(_u(1, "M"), "kg", "kilogram", "kilograms", "kilo", "kilos", "千克", "公斤"),
    **_names(_u(1000, "M"), "ton", "tons", "tonne", "tonnes", "吨"),
    **_names(_u("0.45359237", "M"), "lb", "lbs", "pound", "pounds"),
    **_names(_u("0.028349523125", "M"), "oz", "ounce", "ounces"),
    **_names(_u("1/1000", "T"), "ms", "millisecond", "milliseconds"),
    **_names(_u(1, "T"), "s", "sec", "secs", "second", "seconds", "秒"),
    **_names(_u(60, "T"), "min", "mins", "minute", "minutes", "分钟"),
    **_names(_u(3600, "T"), "h", "hr", "hrs", "hour", "hours", "小时"),
    **_names(_u(86400, "T"), "day", "days", "天"),
    **_names(_u(604800, "T"), "week", "weeks"),
    **_names(_u(31536000, "T"), "year", "years", "yr", "yrs"),
    **_names(DEGREE, "deg", "degree", "degrees", "度"),
    **_names(_u(1, "A"), "rad", "rads", "radian", "radians"),
    **_names(_u(1, "USD"), "$", "dollar", "dollars", "USD", "usd"),
    **_names(_u("1/100", "USD"), "cent", "cents", "¢"),
    **_names(_u(1, "CNY"), "yuan", "RMB", "CNY", "元"),
    **_names(_u(1, "EUR"), "$EUR", "euro", "euros", "EUR"),
    **_names(_u(1, "GBP"), "$GBP", "GBP"),
    **_names(_u(1, "JPY"), "$JPY", "yen", "JPY"),
    **_names(_u(1, "INR"), "$INR", "rupee", "rupees", "INR", "Rs"),
    **_names(_u(1, "N"), "N", "newton", "newtons"),
    **_names(_u(1000, "N"), "kN"),
    **_names(_u(1, "J"), "J", "joule", "joules"),
    **_names(_u(1000, "J"), "kJ"),
    **_names(_u(1, "W"), "W", "watt", "watts"),
    **_names(_u(1000, "W"), "kW"),
    **_names(_u(1, "Pa"), "Pa", "pascal", "pascals"),
    **_names(_u(1000, "Pa"), "kPa"),
    **_names(_u(1, "Hz"), "Hz", "hertz"),
    **_names(_u(1, "V"), "V", "volt", "volts"),
}
_VOLUME = {"l": "1/1000", "L": "1/1000", "liter": "1/1000", "liters": "1/1000",
           "litre": "1/1000", "litres": "1/1000", "ml": "1/1000000", "mL": "1/1000000",
           "milliliter": "1/1000000", "milliliters": "1/1000000", "millilitre": "1/1000000",
           "millilitres": "1/1000000", "cc": "1/1000000", "升": "1/1000", "毫升": "1/1000000"}
UNITS.update({name: Unit(Fraction(f), 0, (("L", 3),)) for name, f in _VOLUME.items()})
UNITS.update({"kmh": UNITS["km"] / UNITS["h"], "kph": UNITS["km"] / UNITS["h"],
              "mph": UNITS["mi"] / UNITS["h"], "mps": UNITS["m"] / UNITS["s"]})
CURRENCY_SIGNS = frozenset({"$", "$EUR", "$GBP", "$JPY", "$INR"})
"""Op tokens that are currency signs written before a number (`\\$5`, `€5`)."""
_POWER_PREFIX = {"square": 2, "sq": 2, "cubic": 3, "cu": 3}
_POWER_SUFFIX = {"squared": 2, "cubed": 3}
_DIVIDE = {"/", "per"}
_MULTIPLY = {"*"}


def unit_named(token: Token) -> Unit | None:
    """The unit a single word or sign names (`cm`, `Meters`, `\\degree`, `$`), or None."""
    if token.kind == "op":
        return DEGREE if token.text == "deg" else UNITS.get(token.text)
    if token.kind != "word":
        return None
    unit = UNITS.get(token.text)
    if unit is None and len(token.text) >= 2:
        unit = UNITS.get(token.text.lower())
    return unit


def _power(tokens: list[Token], i: int) -> tuple[int, int] | None:
    """The exponent of `^2`, `^{2}`, `^{-1}` at tokens[i] (a `^`), and the index after it."""
    texts = [t.text for t in tokens[i:i + 5]]
    if len(texts) >= 2 and texts[1].isdigit() and tokens[i + 1].kind == "num":
        return int(texts[1]), i + 2
    if len(texts) >= 4 and texts[1] == "{" and texts[2].isdigit() and texts[3] == "}":
        return int(texts[2]), i + 4
    if len(texts) >= 5 and texts[1:3] == ["{", "-"] and texts[3].isdigit() and texts[4] == "}":
        return -int(texts[3]), i + 5
    return None


def _degree_mark(tokens: list[Token], i: int) -> int | None:
    """Index after a degree mark at tokens[i] (`deg`, `^deg`, `^{deg}`), or None."""
    texts = [t.text if t.kind == "op" else "" for t in tokens[i:i + 4]]
    for mark in (["deg"], ["^", "deg"], ["^", "{", "deg", "}"]):
        if texts[:len(mark)] == mark:
            return i + len(mark)
    return None


def _factor(tokens: list[Token], i: int) -> tuple[Unit, int] | None:
    """One unit with its optional power word or exponent, starting at tokens[i]."""
    end = _degree_mark(tokens, i)
    if end is not None:
        return DEGREE, end
    power = 1
    if tokens[i].kind == "word" and tokens[i].text.lower() in _POWER_PREFIX:
        power, i = _POWER_PREFIX[tokens[i].text.lower()], i + 1
        if i < len(tokens) and tokens[i].text == ".":
            i += 1
    if i >= len(tokens):
        return None
    unit = unit_named(tokens[i])
    if unit is None:
        return None
    i += 1
    if i < len(tokens) and tokens[i].text == "^":
        exponent = _power(tokens, i)
        if exponent is None:
            return None
        power, i = power * exponent[0], exponent[1]
    elif i < len(tokens) and tokens[i].kind == "num" and tokens[i].text in ("2", "3"):
        power, i = power * int(tokens[i].text), i + 1  # plain `cm2`
    elif i < len(tokens) and tokens[i].text.lower() in _POWER_SUFFIX:
        power, i = power * _POWER_SUFFIX[tokens[i].text.lower()], i + 1
    return unit ** power, i


def parse_unit(tokens: list[Token]) -> Unit | None:
    """The unit all of `tokens` spell (see module doc), or None when they spell no unit."""
    if not tokens:
        return None
    first = _factor(tokens, 0)
    if first is None:
        return None
    unit, i = first
    while i < len(tokens):
        op = tokens[i].text.lower() if tokens[i].kind in ("op", "word") else ""
        divide = op in _DIVIDE
        if not divide and op not in _MULTIPLY:
            nxt = _factor(tokens, i)  # juxtaposed units: `N m`, `kW h`
            if nxt is None:
                return None
        else:
            nxt = _factor(tokens, i + 1) if i + 1 < len(tokens) else None
            if nxt is None:
                return None
        unit = unit / nxt[0] if divide else unit * nxt[0]
        i = nxt[1]
    return unit
