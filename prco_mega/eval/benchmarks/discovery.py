"""Finding and reading each benchmark as its publisher ships it, before anything heavy starts.

For every benchmark: its folder under the data root (`registry.Benchmark.folders`), or else
VLMEvalKit's flat TSV folder (the root itself or `root/LMUData`); every file inside, classified by
the benchmark's published copies (`registry.Copy`) and, for hub files no copy names, by the
repo README's `configs:` block; the requested split's files (one copy of it: a split shipped twice
is read once, and the check says which); then every row read and validated. `check` does all of
this for all benchmarks and `Loaded.lines` prints it (`prco-mega eval --check`).

A folder problem (no file of the split, an unreadable file) raises ValueError, or with
`on_error="skip"` is kept in `Loaded.problem` so that the other benchmarks still run.
"""
from __future__ import annotations

import csv
import fnmatch
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

from prco_mega.data.reader import RowError
from prco_mega.eval.benchmarks.registry import Benchmark, Copy
from prco_mega.eval.benchmarks.rows import DATA_SUFFIXES, BenchItem, Row, iter_rows

FLAT_CHILD = "lmudata"
"""VLMEvalKit's flat TSV folder may be the data root itself, or its `LMUData` child."""
IMAGE_DIRS = ("images", "image")
"""Folders beside a data file (or at the benchmark folder's top) that relative image paths may
be relative to (MathVerse's and MathVista's `images.zip`, LogicVista's `data/images/`)."""


# ---------------------------------------------------------------------------------- the folder


def find_folder(root: Path, bench: Benchmark) -> Path | None:
    """The benchmark's folder under `root` (folder names compared case-insensitively)."""
    if not root.is_dir():
        raise ValueError(f"data root {str(root)!r} is not a directory")
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name.lower() in bench.folders:
            return child
    return None


def _flat_folder(root: Path, bench: Benchmark) -> Path | None:
    """The root (or its LMUData child) when it holds one of the benchmark's VLMEvalKit TSVs."""
    candidates = [root, *(c for c in sorted(root.iterdir())
                          if c.is_dir() and c.name.lower() == FLAT_CHILD)]
    for folder in candidates:
        if any(_copies(bench, PurePosixPath(p.name)) for p in folder.glob("*.tsv")):
            return folder
    return None


# ---------------------------------------------------------------------------------- the files


def _matches(rel: PurePosixPath, pattern: str) -> bool:
    """Whether the end of `rel` matches `pattern`, part by part, case-insensitively."""
    want = PurePosixPath(pattern.lower()).parts
    have = PurePosixPath(str(rel).lower()).parts
    return len(have) >= len(want) and all(
        fnmatch.fnmatchcase(h, w) for h, w in zip(have[-len(want):], want))


def _copies(bench: Benchmark, rel: PurePosixPath) -> list[Copy]:
    return [c for c in bench.copies if any(_matches(rel, p) for p in c.patterns)]


def readme_splits(folder: Path) -> dict[Path, str]:
    """file -> split of a hub repo README's `configs:` block (front matter): a config's split
    is named by the config when it is not "default" (MMMU-Pro's `vision`), else by the split."""
    readme = folder / "README.md"
    if not readme.is_file():
        return {}
    text = readme.read_text(encoding="utf-8-sig", errors="replace")
    if not text.startswith("---"):
        return {}
    try:
        meta = yaml.safe_load(text[3:].split("\n---", 1)[0]) or {}
    except yaml.YAMLError:
        return {}
    out: dict[Path, str] = {}
    for config in meta.get("configs") or [] if isinstance(meta, dict) else []:
        name = str(config.get("config_name") or "default")
        for split, paths in _data_files(config.get("data_files")):
            key = split if name in ("default", split) else name
            for pattern in paths:
                out.update((p, key) for p in sorted(folder.glob(pattern)) if p.is_file())
    return out


def _data_files(spec) -> list[tuple[str, list[str]]]:
    """(split, path globs) of a config's `data_files` (a path, a list of paths, or a list of
    `{split, path}` entries whose path is one glob or several)."""
    if isinstance(spec, str):
        return [("train", [spec])]
    out = []
    for entry in spec or []:
        if isinstance(entry, str):
            out.append(("train", [entry]))
        elif isinstance(entry, dict):
            paths = entry.get("path")
            out.append((str(entry.get("split") or "train"),
                        [paths] if isinstance(paths, str) else list(paths or [])))
    return out


@dataclass
class Found:
    """The files of one benchmark's split, and every other file with why it is not read."""

    bench: Benchmark
    split: str
    folder: Path | None
    files: list[tuple[Path, Copy]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problem: str | None = None
    """A folder problem: the benchmark cannot run (None: it can, or it has no folder)."""


def _data_paths(folder: Path, flat: bool) -> list[Path]:
    if flat:
        return sorted(p for p in folder.glob("*.tsv") if p.is_file())
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and p.suffix.lower() in DATA_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _classify(bench: Benchmark, folder: Path, flat: bool) -> tuple[list[tuple[Path, Copy]],
                                                                   list[str]]:
    """(file, copy) for every file of a published copy (a file may hold several splits), and a
    note for every data file that is not the benchmark's."""
    readme = readme_splits(folder) if not flat else {}
    pairs, notes = [], []
    for path in _data_paths(folder, flat):
        rel = PurePosixPath(path.relative_to(folder).as_posix())
        copies = _copies(bench, rel)
        if not copies and path in readme:
            copies = _readme_copies(bench, readme[path], path)
            if not copies:
                notes.append(f"{rel}: split {readme[path]!r} of the README's configs is not "
                             f"one of {bench.title}'s ({', '.join(bench.splits)})")
        elif not copies and not flat:
            notes.append(f"{rel}: not a {bench.title} data file")
        pairs += [(path, c) for c in copies]
    return pairs, notes


def _readme_copies(bench: Benchmark, split: str, path: Path) -> list[Copy]:
    """A hub file named by the README's configs only: read as the split's hub copy reads."""
    hub = [c for c in bench.copies if c.split == split and c.layout.startswith("hub")
           and any(p.endswith(path.suffix.lower()) for p in c.patterns)]
    return [Copy(split, f"{hub[0].layout} (README configs)", (), hub[0].reader, hub[0].keep)
            ] if hub else []


def find(root: Path, bench: Benchmark, split: str | None = None) -> Found:
    """The benchmark's folder and the files of `split` (default: the paper's), one copy."""
    split = split or bench.default_split
    folder, flat = find_folder(root, bench), False
    if folder is None:
        folder = _flat_folder(root, bench)
        flat = folder is not None
    found = Found(bench, split, folder)
    if folder is None:
        return found
    pairs, found.notes = _classify(bench, folder, flat)
    wanted = [(p, c) for p, c in pairs if c.split in bench.members(split)]
    if not wanted:
        present = sorted({c.split for _, c in pairs})
        found.problem = (f"no file of split {split!r} in {folder} (splits found: "
                         f"{', '.join(present) or 'none'})")
        return found
    order = [c.layout for c in bench.copies]
    chosen = min((c.layout for _, c in wanted),
                 key=lambda layout: order.index(layout) if layout in order else len(order))
    found.files = [(p, c) for p, c in wanted if c.layout == chosen]
    found.notes += [f"{p.relative_to(folder)}: the same split as the {chosen} copy, not read"
                    for p, c in wanted if c.layout != chosen]
    found.notes += [f"{p.relative_to(folder)}: split {c.split!r}, not the one selected"
                    for p, c in pairs if c.split not in bench.members(split)
                    and not any(p == q for q, _ in wanted)]
    return found


# ---------------------------------------------------------------------------------- the rows


@dataclass
class Loaded:
    """One benchmark found and read: its items, or why it cannot run."""

    found: Found
    items: list[BenchItem] = field(default_factory=list)
    rows: dict[Path, int] = field(default_factory=dict)
    """Rows read per file (before the `limit`)."""
    skipped: Counter = field(default_factory=Counter)
    """Bad rows per reason (only with on_error="skip")."""

    @property
    def bench(self) -> Benchmark:
        return self.found.bench

    @property
    def runnable(self) -> bool:
        return self.found.folder is not None and self.found.problem is None

    def lines(self) -> list[str]:
        """What `--check` prints: folder, files read and not read, split, rows, skips."""
        f, b = self.found, self.bench
        if f.folder is None:
            return [f"{b.title}: no folder ({', '.join(b.folders)}) and no VLMEvalKit TSV"]
        split = f.split + (" (the paper's)" if f.split == b.default_split else "")
        out = [f"{b.title}: folder {f.folder}, split {split}"]
        out += [f"  read {p.relative_to(f.folder)} ({c.layout}): {self.rows.get(p, 0)} rows"
                for p, c in f.files]
        out += [f"  not read {note}" for note in f.notes]
        if f.problem:
            return out + [f"  PROBLEM: {f.problem}"]
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        return out + [f"  items {len(self.items)}, skipped rows: {skipped}"]


def _item(bench: Benchmark, copy: Copy, row: Row) -> BenchItem | None:
    if copy.keep is not None and not copy.keep(row):
        return None
    item = copy.reader(row)
    item.task.family = bench.name
    return item


def _read_file(loaded: Loaded, path: Path, copy: Copy, on_error: str,
               seen: dict[str, str]) -> None:
    folder = loaded.found.folder
    image_dirs = tuple(d / name for d in dict.fromkeys([path.parent, folder])
                       for name in IMAGE_DIRS) + (folder,)
    for number, raw in iter_rows(path):
        loaded.rows[path] = loaded.rows.get(path, 0) + 1
        try:
            if isinstance(raw, RowError):
                raise raw
            if not isinstance(raw, dict):
                raise RowError("not_an_object", f"row is a {type(raw).__name__}, not an object")
            item = _item(loaded.bench, copy, Row(raw, path, number, image_dirs))
            if item is None:
                continue
            item.check_images()
            if item.task.uid in seen:
                raise RowError("duplicate_uid", f"uid {item.task.uid!r} already used by "
                               f"{seen[item.task.uid]}")
        except RowError as err:
            if on_error == "raise":
                raise ValueError(f"{path}: row {number}: {err}") from err
            loaded.skipped[err.reason] += 1
            continue
        seen[item.task.uid] = f"{path.name} row {number}"
        loaded.items.append(item)


def load(found: Found, on_error: str = "raise", limit: int | None = None) -> Loaded:
    """Every row of the found files, validated, in file then row order (the first `limit`
    items are kept). A file that cannot be read is a folder problem: raised, or kept in
    `found.problem` with on_error="skip"."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error ({on_error!r}) must be 'raise' or 'skip'")
    loaded = Loaded(found)
    if not loaded.runnable:
        if found.problem and on_error == "raise":
            raise ValueError(f"{found.bench.title}: {found.problem}")
        return loaded
    seen: dict[str, str] = {}
    try:
        for path, copy in found.files:
            _read_file(loaded, path, copy, on_error, seen)
    except (ValueError, csv.Error) as err:  # a file that cannot be read at all
        if on_error == "raise":
            raise ValueError(str(err)) from err
        found.problem, loaded.items = str(err), []
    loaded.items = loaded.items[:limit] if limit is not None else loaded.items
    return loaded


def check(root: Path, benchmarks: list[Benchmark], splits: dict[str, str] | None = None,
          on_error: str = "raise", limit: int | None = None) -> list[Loaded]:
    """Find and read every benchmark under `root` (nothing heavy). ValueError when no benchmark
    is there at all, or (on_error="raise") at the first folder or row problem."""
    loaded = [load(find(root, b, (splits or {}).get(b.name)), on_error, limit) for b in benchmarks]
    if all(x.found.folder is None for x in loaded):
        raise ValueError(f"no benchmark folder under {root} (looked for "
                         f"{', '.join(b.folders[0] for b in benchmarks)}, and VLMEvalKit TSVs)")
    return loaded
