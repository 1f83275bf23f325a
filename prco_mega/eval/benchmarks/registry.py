"""The paper's eight benchmarks as data: folder names, splits, and every published copy of a split.

A benchmark's folder under `--data-root` is found by any of its `folders` (case-insensitive: the
hub repo name as `huggingface-cli download` / `git clone` leaves it, the GitHub repo name, short
forms); without one, VLMEvalKit's flat folder (`LMUData`: every TSV side by side, named as
VLMEvalKit names them) is read. Each `Copy` says which files hold which split, in which layout,
and which row reader reads them; the first copy (in table order) that is present is read and
the others of the same split are reported, never read. Patterns match the end of a file's path
inside the folder, case-insensitively (`test-*.parquet` finds `data/test-00000-of-00001.parquet`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from prco_mega.eval.benchmarks import readers as r
from prco_mega.eval.benchmarks.rows import BenchItem, Row


@dataclass(frozen=True)
class Copy:
    """One published copy of a split."""

    split: str
    layout: str
    """How a reader names it: "hub parquet", "hub JSON", "GitHub JSON", "VLMEvalKit TSV"."""
    patterns: tuple[str, ...]
    reader: Callable[[Row], BenchItem]
    keep: Callable[[Row], bool] | None = None
    """Rows of the file that belong to the split (None: all), for a split published inside a
    larger file (MathVerse's Vision Only rows of testmini)."""


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: where its folder is, what its splits are, what its score is."""

    name: str
    title: str
    """Column header, as the paper's table spells it."""
    folders: tuple[str, ...]
    """Folder names it is found under (lower case)."""
    copies: tuple[Copy, ...]
    default_split: str
    """The split the paper reports."""
    metric: str
    """What the headline number is."""
    split_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """A split made of several published splits (DynaMath's ten variants)."""

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys([*self.split_groups, *(c.split for c in self.copies)]))

    def members(self, split: str) -> set[str]:
        return {split, *self.split_groups.get(split, ())}


def _vision_only(row: Row) -> bool:
    return str(row.get("problem_version") or "").lower() == "vision only"


def _tsv(split: str, *names: str, reader: Callable[[Row], BenchItem]) -> Copy:
    """VLMEvalKit names a file `<dataset>.tsv` (older releases: the download's name), and
    `<name>_local.tsv` when it moved the images of a large file beside it."""
    stems = [n.removesuffix(".tsv") for n in names]
    return Copy(split, "VLMEvalKit TSV", tuple(f"{s}{end}" for s in stems
                                               for end in (".tsv", "_local.tsv")), reader)


DYNAMATH_VARIANTS = tuple(f"sample_variant{k}" for k in range(1, 11))

BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("mathverse", "MathVerse", ("mathverse", "mathverse_mini", "mathverse_testmini"), (
        Copy("testmini", "hub parquet", ("testmini.parquet",), r.mathverse_hub),
        Copy("testmini", "hub JSON", ("testmini.json",), r.mathverse_hub),
        _tsv("testmini", "MathVerse_MINI", "MathVerse_MINIV", reader=r.mathverse_tsv),
        _tsv("vision_only", "MathVerse_MINI_Vision_Only", "MathVerse_MINIVOnly",
             reader=r.mathverse_tsv),
        Copy("vision_only", "hub parquet", ("testmini.parquet",), r.mathverse_hub, _vision_only),
        Copy("vision_only", "hub JSON", ("testmini.json",), r.mathverse_hub, _vision_only),
    ), "testmini", "accuracy over every problem version"),
    Benchmark("mathvision", "MathVision", ("mathvision", "math-vision", "math_vision", "math-v"), (
        Copy("test", "hub parquet", ("test-*.parquet",), r.mathvision_hub),
        Copy("test", "GitHub JSONL", ("test.jsonl",), r.mathvision_hub),
        _tsv("test", "MathVision", reader=r.mathvision_tsv),
        Copy("testmini", "hub parquet", ("testmini-*.parquet",), r.mathvision_hub),
        Copy("testmini", "GitHub JSONL", ("testmini.jsonl",), r.mathvision_hub),
        _tsv("testmini", "MathVision_MINI", reader=r.mathvision_tsv),
    ), "test", "accuracy"),
    Benchmark("mathvista", "MathVista", ("mathvista", "mathvista_mini", "mathvista_testmini"), (
        Copy("testmini", "hub parquet", ("testmini-*.parquet",), r.mathvista_hub),
        Copy("testmini", "hub JSON", ("annot_testmini.json", "testmini.json"), r.mathvista_hub),
        _tsv("testmini", "MathVista_MINI", reader=r.mathvista_tsv),
    ), "testmini", "accuracy"),
    Benchmark("wemath", "WeMath", ("wemath", "we-math", "we_math"), (
        Copy("testmini", "hub parquet", ("testmini-*.parquet", "testmini.parquet"), r.wemath_hub),
        Copy("testmini", "GitHub JSON", ("testmini.json",), r.wemath_hub),
        _tsv("testmini", "WeMath", reader=r.wemath_tsv),
    ), "testmini", "four-dimensional Score (Strict)"),
    Benchmark("dynamath", "DynaMath", ("dynamath", "dynamath_sample", "dynamath-sample"), (
        *(Copy(v, "hub parquet", (f"{v}-*.parquet", f"{v}.parquet"), r.dynamath_hub)
          for v in DYNAMATH_VARIANTS),
        _tsv("sample", "DynaMath", reader=r.dynamath_tsv),
    ), "sample", "worst-case accuracy over each seed's variants",
        {"sample": DYNAMATH_VARIANTS}),
    Benchmark("logicvista", "LogicVista", ("logicvista",), (
        Copy("test", "GitHub JSON", ("dataset.json",), r.logicvista_github),
        _tsv("test", "LogicVista", reader=r.logicvista_tsv),
    ), "test", "accuracy"),
    Benchmark("mmmu_pro_v", "MMMU-Pro",
              ("mmmu_pro_v", "mmmu_pro", "mmmu-pro", "mmmu_pro_vision"), (
                  Copy("vision", "hub parquet", ("vision/test-*.parquet",), r.mmmu_pro_v_hub),
                  _tsv("vision", "MMMU_Pro_V", reader=r.mmmu_pro_v_tsv),
              ), "vision", "accuracy (vision setting)"),
    Benchmark("mmstar", "MMStar", ("mmstar",), (
        Copy("val", "hub parquet", ("mmstar.parquet",), r.mmstar_hub),
        _tsv("val", "MMStar", reader=r.mmstar_tsv),
    ), "val", "accuracy"),
)
"""In the paper's column order; each benchmark's copies in the order they are preferred."""
BY_NAME = {b.name: b for b in BENCHMARKS}


def select(names: str) -> list[Benchmark]:
    """`all` or a comma-separated list of benchmark names (paper order kept)."""
    if names.strip().lower() == "all":
        return list(BENCHMARKS)
    wanted = [n.strip().lower() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in BY_NAME]
    if unknown or not wanted:
        raise ValueError(f"unknown benchmark(s) {unknown or names!r}; known: {list(BY_NAME)}")
    return [b for b in BENCHMARKS if b.name in wanted]


def parse_splits(specs: list[str]) -> dict[str, str]:
    """`--split name=split` (repeated or comma-separated) -> {benchmark: split}, every split
    checked against the benchmark's known ones."""
    chosen: dict[str, str] = {}
    for spec in (s.strip() for part in specs for s in part.split(",") if s.strip()):
        name, sep, split = spec.partition("=")
        bench = BY_NAME.get(name.strip().lower())
        if not sep or bench is None:
            raise ValueError(f"--split {spec!r}: expected BENCHMARK=SPLIT with a benchmark of "
                             f"{list(BY_NAME)}")
        if split.strip() not in bench.splits:
            raise ValueError(f"--split {spec!r}: {bench.name} has splits {bench.splits}")
        chosen[bench.name] = split.strip()
    return chosen


def splits_help() -> str:
    """Per benchmark: the default split (the paper's) and the others (a group's members as a
    range: DynaMath's `sample_variant1..sample_variant10`)."""
    parts = []
    for b in BENCHMARKS:
        members = [m for group in b.split_groups.values() for m in group]
        others = [s for s in b.splits if s != b.default_split and s not in members]
        if members:
            others.append(f"one of {members[0]}..{members[-1]}")
        parts.append(f"{b.name}: {b.default_split}" + (f" (or {', '.join(others)})"
                                                        if others else ""))
    return "; ".join(parts)
