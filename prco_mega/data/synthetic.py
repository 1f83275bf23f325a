"""The synthetic perception-reasoning task: the default data set, where perception can be scored.

Every task is a pure function of `(seed, index)`: an image rendered with PIL, a question whose
answer needs both reading the image and one reasoning step, the gold answer, and the ground-truth
scene facts (schemas in `synthetic_families`). Nothing is stored on disk.

    source = SyntheticTaskSource(SyntheticConfig(image_size=448, difficulty=2, seed=7))
    task = source.task(0)          # same (seed, index) -> same task, same pixels
    tasks = source.batch(0, 16)
"""
from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterator

from prco_mega.data.images import normalize_image
from prco_mega.data.synthetic_families import FAMILIES
from prco_mega.types import Task

PATCH_MULTIPLE = 28  # Qwen2.5-VL: 14 px patches merged 2x2
DIFFICULTIES = (1, 2, 3)


def _default_mix() -> dict[str, float]:
    return {name: 1.0 for name in FAMILIES}


@dataclass
class SyntheticConfig:
    """Knobs of the synthetic task generator."""

    image_size: int = 448
    """Side of the square image in pixels; a multiple of 28 (Qwen2.5-VL's merged patch), >= 224."""
    difficulty: int = 1
    """1, 2 or 3: more objects/bars/cells, wider value ranges, random vertex letters."""
    family_weights: dict[str, float] = field(default_factory=_default_mix)
    """Relative sampling weight of each family (shapes, bars, geometry, table); 0 disables one."""
    seed: int = 0
    """Data set seed; task `i` of seed `s` is always the same task."""

    def __post_init__(self) -> None:
        if self.image_size % PATCH_MULTIPLE or self.image_size < 224:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of "
                             f"{PATCH_MULTIPLE} and at least 224")
        if self.difficulty not in DIFFICULTIES:
            raise ValueError(f"difficulty ({self.difficulty}) must be one of {DIFFICULTIES}")
        unknown = sorted(set(self.family_weights) - set(FAMILIES))
        if unknown:
            raise ValueError(f"family_weights has unknown families {unknown}; "
                             f"known: {sorted(FAMILIES)}")
        weights = list(self.family_weights.values())
        if any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
            raise ValueError(f"family_weights ({self.family_weights}) must be finite, "
                             "non-negative and not all zero")


def format_number(x: Fraction | int | float) -> str:
    """Canonical answer string: `12`, `7.5`, `-3`; non-terminating fractions as `p/q`."""
    frac = Fraction(x).limit_denominator(10_000)
    if frac.denominator == 1:
        return str(frac.numerator)
    den = frac.denominator
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    if den == 1:
        return format(float(frac), "f").rstrip("0").rstrip(".")
    return f"{frac.numerator}/{frac.denominator}"


def answer_from_facts(facts: dict[str, Any]) -> Fraction:
    """Apply `facts["query"]` (op over the values of the named items) to get the gold answer."""
    values = {it["name"]: Fraction(it["value"]) for it in facts["items"]}
    op, args = facts["query"]["op"], [values[name] for name in facts["query"]["args"]]
    if op == "sum":
        return sum(args, Fraction(0))
    if op == "diff":
        return args[0] - args[1]
    if op == "range":
        return max(args) - min(args)
    if op == "ratio":
        return args[0] / args[1]
    if op == "third_angle":
        return 180 - sum(args)
    if op == "rect_area":
        return args[0] * args[1]
    if op == "rect_perimeter":
        return 2 * (args[0] + args[1])
    if op == "right_triangle_area":
        return args[0] * args[1] / 2
    if op == "hypotenuse":
        root = math.isqrt(int(args[0] ** 2 + args[1] ** 2))
        assert root * root == args[0] ** 2 + args[1] ** 2, "legs must form a Pythagorean triple"
        return Fraction(root)
    raise AssertionError(f"unknown query op {op!r}")


def task_rng(seed: int, index: int) -> random.Random:
    """Independent stream per (seed, index), stable across processes and Python versions."""
    digest = hashlib.sha256(f"prco-synthetic:{seed}:{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


class SyntheticTaskSource:
    """Random-access, deterministic source of synthetic `Task`s."""

    def __init__(self, cfg: SyntheticConfig):
        self.cfg = cfg
        self._families = [f for f, w in cfg.family_weights.items() if w > 0]
        self._weights = [cfg.family_weights[f] for f in self._families]

    def task(self, index: int) -> Task:
        if index < 0:
            raise ValueError(f"task index ({index}) must be >= 0")
        cfg = self.cfg
        rng = task_rng(cfg.seed, index)
        family = rng.choices(self._families, weights=self._weights)[0]
        image, question, facts = FAMILIES[family](rng, cfg.image_size, cfg.difficulty)
        return Task(
            uid=f"synthetic-{cfg.seed}-{index}",
            question=question,
            answer=format_number(answer_from_facts(facts)),
            images=[normalize_image(image)],
            family=family,
            facts=facts,
            meta={"seed": cfg.seed, "index": index, "difficulty": cfg.difficulty,
                  "image_size": cfg.image_size},
        )

    __getitem__ = task

    def batch(self, start: int, size: int) -> list[Task]:
        """Tasks `start .. start + size - 1`."""
        return [self.task(i) for i in range(start, start + size)]

    def iter(self, start: int = 0, stop: int | None = None) -> Iterator[Task]:
        """Tasks from `start` up to `stop` (forever when None)."""
        index = start
        while stop is None or index < stop:
            yield self.task(index)
            index += 1

    def __iter__(self) -> Iterator[Task]:
        return self.iter()


def source_of(data: Any, seed: int) -> SyntheticTaskSource:
    """The synthetic tasks a run config's data section (`config.DataSection`) asks for, drawn
    from `seed` (training, the held-out tasks and the warm start each use their own)."""
    kwargs = {"family_weights": data.families} if data.families else {}
    return SyntheticTaskSource(SyntheticConfig(image_size=data.image_size,
                                               difficulty=data.difficulty, seed=seed, **kwargs))


HELD_OUT_SEED_OFFSET = 10_007
"""Held-out tasks are drawn from the run's seed plus this: never a training task."""


def held_out_tasks(data: Any, run_seed: int, n: int) -> list[Task]:
    """The run's `n` held-out tasks: another seed than training's, the same families and
    difficulty."""
    source = source_of(data, run_seed + HELD_OUT_SEED_OFFSET)
    return [source.task(i) for i in range(n)]
