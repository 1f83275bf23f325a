"""The paper's eight evaluation benchmarks, read from local files.

`--data-root DIR` holds one folder per benchmark (any of `Benchmark.folders`, case-insensitive).
A folder holds the benchmark in either layout it ships in, one or more files read in name order:

- Hugging Face exports (`.parquet`, `.jsonl`, `.json`): each dataset's own columns; an image is a
  `{"bytes", "path"}` struct, raw bytes, base64 text or a path relative to the file.
- VLMEvalKit TSV (`.tsv`): `index`, `question`, option columns `A`, `B`, ..., `answer`, a base64
  `image`, plus the benchmark's extra columns (`problem_version`, `qid`/`varid`, `key`, ...).

Every row becomes a `BenchItem`: a `Task` whose question is the full text the model is shown
(options included, answer-format hints left out: the role templates ask for `\\boxed{}`), whose
gold answer is the option letter for multiple choice, and whose `meta` carries what scoring needs
(`options`, answer type, precision, breakdown `group`, WeMath step keys, DynaMath seed/variant).
Images stay encoded until `BenchItem.task_with_images` decodes them, so a benchmark of large
screenshots is not held decoded in memory. A bad row raises ValueError naming file and row, or is
counted in `ReadResult.skipped` with `on_error="skip"`.
"""
from __future__ import annotations

import ast
import base64
import binascii
import csv
import dataclasses
import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prco_mega.data.images import DEFAULT_MAX_PIXELS, decode_image, resize_to_grid
from prco_mega.data.reader import RowError, _iter_jsonl, _iter_parquet
from prco_mega.types import Task

LETTERS = "ABCDEFGHIJ"
IMAGE_KEYS = ("decoded_image", "image", "images", "image_path", "image_bytes")
DATA_SUFFIXES = (".parquet", ".tsv", ".jsonl", ".json")
_IMAGE_TAG = re.compile(r"<\s*image\s*\d*\s*>", re.IGNORECASE)
_HINT_LINE = re.compile(r"^\s*Hint\s*:.*?(?:\n|$)", re.IGNORECASE)
_QUESTION_PREFIX = re.compile(r"^\s*Question\s*:\s*", re.IGNORECASE)
_OPTION_LABEL = re.compile(r"(?<![A-Za-z0-9])\(?([A-J])(?:\)|:|\.|：)\s*")
MMMU_PRO_V_PROMPT = "Answer the multiple-choice question shown in the image."
"""MMMU-Pro's vision setting shows the question and its options only inside the image."""


@dataclass
class BenchItem:
    """One benchmark row: the task (images still encoded) and where it came from."""

    task: Task
    image_sources: list[bytes | Path]
    file: Path
    row: int

    def task_with_images(self, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Task:
        """The task with its images decoded and, with `max_pixels`, resized onto the vision
        patch grid within that many pixels (`resize_to_grid`); None leaves the size to the
        engine's processor. RowError naming the image when one cannot be decoded."""
        try:
            images = [decode_image(src) for src in self.image_sources]
            if max_pixels is not None:
                images = [resize_to_grid(im, max_pixels=max_pixels) for im in images]
        except ValueError as err:
            raise RowError("corrupt_image", str(err)) from err
        return dataclasses.replace(self.task, images=images)


@dataclass
class Row:
    """One raw row and its place, with typed getters that raise RowError."""

    values: dict[str, Any]
    file: Path
    number: int

    def get(self, *keys: str) -> Any:
        """First present, non-empty value among `keys` (None when none is)."""
        for key in keys:
            value = self.values.get(key)
            if value is not None and not (isinstance(value, str) and not value.strip()):
                return value
        return None

    def text(self, *keys: str) -> str:
        value = self.get(*keys)
        if value is None:
            raise RowError("missing_column", f"no value in column {' / '.join(keys)}")
        return str(value).strip()

    def uid(self, *keys: str) -> str:
        value = self.get(*keys)
        return str(value) if value is not None else f"{self.file.name}:{self.number}"

    def images(self) -> list[bytes | Path]:
        key = next((k for k in IMAGE_KEYS if self.get(k) is not None), None)
        if key is None:
            raise RowError("missing_image", f"no image (looked for columns {IMAGE_KEYS})")
        values = self.values[key]
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        return [self._image_source(key, v) for v in values]

    def _image_source(self, key: str, value: Any) -> bytes | Path:
        if isinstance(value, dict):  # Hugging Face Image feature
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if not isinstance(value, str) or not value:
            raise RowError("bad_image", f"column {key!r}: image of type {type(value).__name__}")
        path = self._existing_file(value)
        if path is not None:
            return path
        try:
            return base64.b64decode(value.partition(",")[2] if value.startswith("data:")
                                    else value, validate=True)
        except (binascii.Error, ValueError) as err:
            raise RowError("bad_image", f"column {key!r}: {value[:60]!r} is neither an existing "
                           "file nor base64") from err

    def _existing_file(self, value: str) -> Path | None:
        """`value` as an existing file (relative to the data file), else None."""
        try:
            path = Path(value) if Path(value).is_absolute() else self.file.parent / value
            return path if path.is_file() else None
        except (OSError, ValueError):  # base64 text is no valid path (too long, NUL)
            return None

    def options_from_columns(self) -> list[str] | None:
        """VLMEvalKit option columns A, B, ... (in order, up to the first missing one)."""
        options = []
        for letter in LETTERS:
            value = self.get(letter)
            if value is None:
                break
            options.append(str(value).strip())
        return options or None

    def listed(self, *keys: str) -> list[str] | None:
        """A list column, or its text form (`"['a', 'b']"`, as TSV exports write lists)."""
        value = self.get(*keys)
        if value is None:
            return None
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError) as err:
                raise RowError("bad_options", f"column {keys[0]!r}: {value[:60]!r} is not a "
                               "list") from err
        if not isinstance(value, (list, tuple)):
            raise RowError("bad_options", f"column {keys[0]!r} must be a list")
        return [str(v).strip() for v in value] or None

    def mapping(self, key: str) -> dict[str, Any]:
        """A struct column, or its text form (`"{'subject': ...}"`)."""
        value = self.values.get(key)
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                return {}
        return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------------------------- text helpers


def format_options(options: list[str]) -> str:
    return "Options:\n" + "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def question_stem(text: str) -> str:
    """`text` without image tags, a leading `Hint: ...` line and a leading `Question:`."""
    text = _IMAGE_TAG.sub("", text).strip()
    text = _HINT_LINE.sub("", text, count=1)
    return _QUESTION_PREFIX.sub("", text, count=1).strip()


def options_in_text(text: str) -> list[str] | None:
    """Option texts of labels `A:`/`A.`/`(A)` ... found in order in a question, or None.

    Benchmarks that embed their options in the question (MathVerse, MMStar, DynaMath) are
    scored by letter; these texts also let an answer that repeats an option's text count.
    """
    labels = [m for m in _OPTION_LABEL.finditer(text)]
    start = next((i for i, m in enumerate(labels) if m[1] == "A"), None)
    if start is None:
        return None
    run = [labels[start]]
    for m in labels[start + 1:]:
        if m[1] == LETTERS[len(run)]:
            run.append(m)
    if len(run) < 2:
        return None
    ends = [m.start() for m in run[1:]] + [len(text)]
    return [text[m.end():end].strip().rstrip(",;").strip() for m, end in zip(run, ends)]


def gold_letter(answer: str, options: list[str] | None) -> str:
    """The option letter of a gold answer given as a letter or as an option's text (any letter
    A-J when the options are not known, e.g. shown only in the image)."""
    stripped = answer.strip().strip("()").strip()
    if len(stripped) == 1 and stripped.upper() in LETTERS[:len(options or LETTERS)]:
        return stripped.upper()
    for i, option in enumerate(options or []):
        if option.strip() == answer.strip():
            return LETTERS[i]
    raise RowError("bad_answer", f"answer {answer!r} is neither an option letter nor one of the "
                   f"options {options}")


def _item(row: Row, uid: str, question: str, answer: str, meta: dict[str, Any],
          options: list[str] | None = None) -> BenchItem:
    task = Task(uid=uid, question=question, answer=answer, family="",
                meta={"options": options, "file": str(row.file), "row": row.number, **meta})
    return BenchItem(task, row.images(), row.file, row.number)


def _choice_item(row: Row, uid: str, question: str, options: list[str] | None,
                 meta: dict[str, Any], shown: bool = False) -> BenchItem:
    """A multiple-choice item; `shown`: the options are already in `question`, or in the
    image only (MathVerse's vision versions: then `options` is None and the gold a letter)."""
    if not options and not shown:
        raise RowError("missing_options", "multiple-choice row without options")
    text = question if shown else f"{question}\n{format_options(options)}"
    answer = gold_letter(row.text("answer", "ground_truth"), options)
    return _item(row, uid, text, answer, {"kind": "choice", **meta}, options)


# ---------------------------------------------------------------------------------- benchmarks


def mathverse_item(row: Row) -> BenchItem:
    """MathVerse testmini (HF or VLMEvalKit): `problem_version` is the breakdown."""
    question = question_stem(row.text("question"))
    meta = {"group": str(row.get("problem_version") or "unknown"),
            "subject": row.mapping("metadata").get("subject")}
    uid = row.uid("sample_index", "index")
    if "choice" in str(row.get("question_type") or "").lower():
        return _choice_item(row, uid, question, options_in_text(question), meta, shown=True)
    return _item(row, uid, question, row.text("answer"), {"kind": "free", **meta})


def mathvision_item(row: Row) -> BenchItem:
    """MATH-Vision (HF `options` list, or VLMEvalKit `choices`/option columns)."""
    question = question_stem(row.text("question"))
    options = row.listed("options", "choices") or row.options_from_columns()
    meta = {"group": str(row.get("subject", "category") or "unknown"), "level": row.get("level")}
    uid = row.uid("id", "index")
    if options:
        return _choice_item(row, uid, question, options, meta)
    return _item(row, uid, question, row.text("answer"), {"kind": "free", **meta})


def mathvista_item(row: Row) -> BenchItem:
    """MathVista testmini: answer and question types, precision; task category breakdown."""
    question = question_stem(row.text("question"))
    meta = {"group": str(row.get("task") or row.mapping("metadata").get("task") or "unknown"),
            "answer_type": str(row.get("answer_type") or "text"),
            "precision": row.get("precision"), "unit": row.get("unit")}
    uid = row.uid("pid", "index")
    options, in_text = row.listed("choices"), options_in_text(question)
    if str(row.get("question_type") or "") == "multi_choice" or options:
        return _choice_item(row, uid, question, options or in_text, meta, shown=bool(in_text))
    return _item(row, uid, question, row.text("answer"), {"kind": "free", **meta})


_WEMATH_OPTION = re.compile(r"(?:^|;)\s*([A-H])\s*[.:：]\s*")


def wemath_options(row: Row) -> list[str] | None:
    """WeMath options: columns A.. (VLMEvalKit) or one `option` string `A. x; B. y` (HF)."""
    columns = row.options_from_columns()
    if columns or row.get("option") is None:
        return columns
    text = str(row.get("option"))
    marks = list(_WEMATH_OPTION.finditer(text))
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return [text[m.end():end].strip() for m, end in zip(marks, ends)] or None


def wemath_item(row: Row) -> BenchItem:
    """WeMath testmini: `ID` groups a multi-step problem with its sub-problems (`key`)."""
    problem, key = row.text("ID", "id"), row.text("key")
    meta = {"group": key.split("_")[0], "wemath_id": problem, "wemath_key": key}
    return _choice_item(row, row.uid("index") if row.get("index") is not None
                        else f"{problem}@{key}", question_stem(row.text("question")),
                        wemath_options(row), meta)


_VARIANT = re.compile(r"variant_?(\d+)|sample_?(\d+)", re.IGNORECASE)


def dynamath_item(row: Row) -> BenchItem:
    """DynaMath: seed question (`qid`, HF `id`) and variant (`varid`, or the HF split's file
    name `sample_variantN`) give the worst case over each seed's variants."""
    seed = row.text("qid", "id")
    variant = row.get("varid", "variant")
    if variant is None:
        m = _VARIANT.search(row.file.stem)
        variant = next(g for g in m.groups() if g) if m else "1"
    answer_type = str(row.get("answer_type") or "text")
    question = question_stem(row.text("question"))
    meta = {"group": str(row.get("subject") or "unknown"), "seed": seed,
            "variant": str(variant), "answer_type": answer_type}
    uid = row.uid("index") if row.get("index") is not None else f"{seed}-v{variant}"
    if answer_type == "multiple choice":
        return _choice_item(row, uid, question, options_in_text(question), meta, shown=True)
    return _item(row, uid, question, row.text("answer", "ground_truth"),
                 {"kind": "free", **meta})


def logicvista_item(row: Row) -> BenchItem:
    """LogicVista: the options are in the question; the answer may name several letters."""
    question = question_stem(row.text("question"))
    columns = row.options_from_columns()
    text = f"{question}\n{format_options(columns)}" if columns else question
    answer = row.text("answer")
    letters = sorted(set(re.findall(r"[A-J]", answer.upper())))
    if not letters:
        raise RowError("bad_answer", f"answer {answer!r} names no option letter")
    meta = {"kind": "letters", "group": str(row.get("skill") or "unknown").split(",")[0].strip()}
    return _item(row, row.uid("index", "id", "question_id"), text, ", ".join(letters), meta,
                 columns or options_in_text(question))


def mmmu_pro_v_item(row: Row) -> BenchItem:
    """MMMU-Pro vision: question and options are in the image; the text is a fixed request."""
    options = row.listed("options") or row.options_from_columns()
    meta = {"group": str(row.get("subject", "category") or "unknown")}
    return _choice_item(row, row.uid("id", "index"), MMMU_PRO_V_PROMPT, options, meta, shown=True)


def mmstar_item(row: Row) -> BenchItem:
    """MMStar: options embedded in the question (HF) or option columns (VLMEvalKit)."""
    question = question_stem(row.text("question"))
    columns = row.options_from_columns()
    meta = {"group": str(row.get("category") or "unknown")}
    uid = row.uid("index", "id")
    if columns and options_in_text(question) is None:
        return _choice_item(row, uid, question, columns, meta)
    return _choice_item(row, uid, question, columns or options_in_text(question), meta,
                        shown=True)


# ---------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: where its folder is, how a row becomes an item, what its score is."""

    name: str
    title: str
    """Column header, as the paper's table spells it."""
    folders: tuple[str, ...]
    item: Callable[[Row], BenchItem]
    metric: str
    """What the headline number is."""


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("mathverse", "MathVerse", ("mathverse", "mathverse_mini", "mathverse_testmini"),
              mathverse_item, "accuracy over all problem versions (testmini)"),
    Benchmark("mathvision", "MathVision", ("mathvision", "math-vision", "math_vision"),
              mathvision_item, "accuracy"),
    Benchmark("mathvista", "MathVista", ("mathvista", "mathvista_mini", "mathvista_testmini"),
              mathvista_item, "accuracy (testmini)"),
    Benchmark("wemath", "WeMath", ("wemath", "we-math"), wemath_item,
              "four-dimensional Score (Strict)"),
    Benchmark("dynamath", "DynaMath", ("dynamath",), dynamath_item,
              "worst-case accuracy over each seed's variants"),
    Benchmark("logicvista", "LogicVista", ("logicvista",), logicvista_item, "accuracy"),
    Benchmark("mmmu_pro_v", "MMMU-Pro", ("mmmu_pro_v", "mmmu-pro", "mmmu_pro", "mmmu_pro_vision"),
              mmmu_pro_v_item, "accuracy (vision setting)"),
    Benchmark("mmstar", "MMStar", ("mmstar",), mmstar_item, "accuracy"),
)
"""In the paper's column order."""
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


def find_folder(root: Path, bench: Benchmark) -> Path | None:
    """The benchmark's folder under `root` (folder names compared case-insensitively)."""
    if not root.is_dir():
        raise ValueError(f"data root {str(root)!r} is not a directory")
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name.lower() in bench.folders:
            return child
    return None


def data_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in DATA_SUFFIXES)
    if not files:
        raise ValueError(f"benchmark folder {str(folder)!r} holds no {DATA_SUFFIXES} file")
    return files


# ---------------------------------------------------------------------------------- reading


def _iter_tsv(path: Path) -> Iterator[tuple[int, Any]]:
    csv.field_size_limit(sys.maxsize)  # base64 images are long fields
    with path.open(newline="", encoding="utf-8") as f:
        for number, row in enumerate(csv.DictReader(f, delimiter="\t"), start=1):
            yield number, row


def _iter_json(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err.msg})") from err
    rows = rows if isinstance(rows, list) else list(rows.values())
    yield from enumerate(rows, start=1)


def iter_rows(path: Path) -> Iterator[tuple[int, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _iter_parquet(path)
    if suffix == ".tsv":
        return _iter_tsv(path)
    return _iter_jsonl(path) if suffix == ".jsonl" else _iter_json(path)


@dataclass
class ReadResult:
    items: list[BenchItem]
    files: list[Path]
    skipped: Counter = field(default_factory=Counter)
    """Bad rows per reason (only with on_error="skip")."""


def _row_item(bench: Benchmark, path: Path, number: int, raw: Any) -> BenchItem:
    if isinstance(raw, RowError):
        raise raw
    if not isinstance(raw, dict):
        raise RowError("not_an_object", f"row is a {type(raw).__name__}, not an object")
    item = bench.item(Row(raw, path, number))
    item.task.family = bench.name
    return item


def read_benchmark(bench: Benchmark, folder: Path, on_error: str = "raise",
                   limit: int | None = None) -> ReadResult:
    """Items of every data file in `folder`, in file then row order (the first `limit`)."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error ({on_error!r}) must be 'raise' or 'skip'")
    result = ReadResult([], data_files(folder))
    seen: dict[str, str] = {}
    for path in result.files:
        for number, raw in iter_rows(path):
            if limit is not None and len(result.items) >= limit:
                return result
            try:
                item = _row_item(bench, path, number, raw)
                if item.task.uid in seen:
                    raise RowError("duplicate_uid", f"uid {item.task.uid!r} already used by "
                                   f"{seen[item.task.uid]}")
            except RowError as err:
                if on_error == "raise":
                    raise ValueError(f"{path}: row {number}: {err}") from err
                result.skipped[err.reason] += 1
                continue
            seen[item.task.uid] = f"{path.name} row {number}"
            result.items.append(item)
    return result
