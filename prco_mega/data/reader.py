"""Verifiable multimodal RL data from local JSONL or parquet files (ViRL39K-style rows).

A row has a question, a gold answer and one or more images. Column names are found among common
spellings (question/problem/prompt, answer/solution/gold, image/images/image_path/image_bytes).
An image value may be a path (relative to the data file), raw bytes, base64 text (optionally a
`data:` URL), a `{"bytes": ..., "path": ...}` struct as Hugging Face parquet exports write, or a
list of these. Every bad row either raises ValueError naming file, row and reason, or (with
`on_error="skip"`) is skipped and counted in `reader.stats`; never dropped silently.

    reader = TaskReader("data/virl39k.parquet", ReaderConfig(on_error="skip"))
    tasks = list(reader)
    print(reader.stats)            # ReaderStats(rows=..., tasks=..., skipped={"corrupt_image": 2})
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from prco_mega.data.images import BACKENDS, PIL_MAX_IMAGE_PIXELS, ImageTooLarge, decode_image
from prco_mega.types import Task

QUESTION_KEYS = ("question", "problem", "prompt", "query")
ANSWER_KEYS = ("answer", "solution", "gold", "ground_truth", "label")
IMAGE_KEYS = ("images", "image", "image_path", "image_paths", "image_bytes")
ID_KEYS = ("uid", "qid", "id")
CHOICE_KEYS = ("choices", "options")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_BOXED_RE = re.compile(r"^\s*\\boxed\{(.*)\}\s*$", re.DOTALL)
_IMAGE_TAG_RE = re.compile(r"<image>\s*")
UTF8_BOM = b"\xef\xbb\xbf"


class RowError(ValueError):
    """A bad row; `reason` is the stats key (missing_answer, corrupt_image, ...)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class ReaderConfig:
    """How to read a local data file."""

    on_error: str = "raise"
    """"raise": a bad row raises ValueError; "skip": it is skipped and counted in `stats`."""
    image_backend: str = "pil"
    """Decoder for images: "pil" or "dali" (NVIDIA DALI's CPU decoder)."""
    require_image: bool = True
    """A row without any image is malformed (this is multimodal data)."""
    source: str = ""
    """Name put in `Task.family`; default: the data file's stem."""
    max_image_pixels: int = PIL_MAX_IMAGE_PIXELS
    """Larger images are bad rows (`image_too_large`), refused before their pixels are decoded."""

    def __post_init__(self) -> None:
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error ({self.on_error!r}) must be 'raise' or 'skip'")
        if self.max_image_pixels < 1:
            raise ValueError(f"max_image_pixels ({self.max_image_pixels}) must be >= 1")
        if self.image_backend not in BACKENDS:
            raise ValueError(f"image_backend ({self.image_backend!r}) must be one of {BACKENDS}")


@dataclass
class ReaderStats:
    """What a pass over the file saw."""

    rows: int = 0
    """Rows read (good and bad)."""
    tasks: int = 0
    """Tasks produced."""
    skipped: Counter = field(default_factory=Counter)
    """Skipped rows per reason (only with on_error="skip")."""


def _first_key(row: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if row.get(k) is not None), None)


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed row or RowError) for every non-blank line.

    Lines are read as bytes and decoded one by one, so a line that is not UTF-8 is one bad row
    rather than the end of the file. A UTF-8 byte-order mark before the first line (what many
    editors and spreadsheet exports write) is not part of the data."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1:
                raw = raw.removeprefix(UTF8_BOM)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield number, RowError("bad_encoding", f"not UTF-8 (byte 0x{raw[err.start]:02x} "
                                       f"at position {err.start})")
                continue
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as err:
                yield number, RowError("malformed_json", f"invalid JSON ({err.msg})")


def _iter_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based row number, row dict), streaming one record batch at a time."""
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ValueError(f"reading parquet file {path} needs the package pyarrow "
                         "(pip install pyarrow), which is not installed") from err
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"data file {path} is not a readable parquet file: {err}") from err
    number = 0
    for batch in parquet.iter_batches(batch_size=256):
        for row in batch.to_pylist():
            number += 1
            yield number, row


def _answer_text(value: Any) -> str:
    """Gold answer as a string; a whole-answer `\\boxed{...}` wrapper is removed."""
    text = str(value).strip()
    boxed = _BOXED_RE.match(text)
    return boxed.group(1).strip() if boxed else text


class TaskReader:
    """Iterates the `Task`s of one JSONL (`.jsonl`/`.json`) or parquet (`.parquet`) file."""

    def __init__(self, path: str | Path, cfg: ReaderConfig | None = None):
        self.path = Path(path)
        self.cfg = cfg or ReaderConfig()
        self.stats = ReaderStats()
        suffix = self.path.suffix.lower()
        if suffix not in (".jsonl", ".json", ".parquet"):
            raise ValueError(f"data file {self.path} must end in .jsonl, .json or .parquet")
        check_readable(self.path, "data file")
        self._rows = _iter_parquet if suffix == ".parquet" else _iter_jsonl

    def __iter__(self) -> Iterator[Task]:
        self.stats = ReaderStats()
        for number, row in self._rows(self.path):
            self.stats.rows += 1
            try:
                if isinstance(row, RowError):
                    raise row
                task = self._task(row, number)
            except RowError as err:
                if self.cfg.on_error == "raise":
                    raise ValueError(f"{self.path}: row {number}: {err}") from err
                self.stats.skipped[err.reason] += 1
                continue
            self.stats.tasks += 1
            yield task

    def _task(self, row: Any, number: int) -> Task:
        if not isinstance(row, dict):
            raise RowError("not_an_object", f"row is a {type(row).__name__}, not an object")
        q_key, a_key = _first_key(row, QUESTION_KEYS), _first_key(row, ANSWER_KEYS)
        if q_key is None or not str(row[q_key]).strip():
            raise RowError("missing_question", f"no question (looked for {QUESTION_KEYS})")
        if a_key is None or not str(row[a_key]).strip():
            raise RowError("missing_answer", f"no answer (looked for {ANSWER_KEYS})")
        images = self._images(row)
        question, n_tags = _IMAGE_TAG_RE.subn("", str(row[q_key]))
        id_key = _first_key(row, ID_KEYS)
        c_key = _first_key(row, CHOICE_KEYS)
        return Task(
            uid=str(row[id_key]) if id_key else f"{self.path.stem}:{number}",
            question=question.strip(),
            answer=_answer_text(row[a_key]),
            images=images,
            family=self.cfg.source or self.path.stem,
            choices=self._choices(row, c_key),
            meta={"file": str(self.path), "row": number, "image_tags": n_tags},
        )

    @staticmethod
    def _choices(row: dict[str, Any], key: str | None) -> list[str] | None:
        if key is None:
            return None
        if not isinstance(row[key], list):
            raise RowError("bad_choices", f"column {key!r} must be a list, "
                           f"got {type(row[key]).__name__}")
        return [str(c) for c in row[key]]

    def _images(self, row: dict[str, Any]) -> list:
        key = _first_key(row, IMAGE_KEYS)
        values = [] if key is None else row[key]
        values = values if isinstance(values, list) else [values]
        if not values and self.cfg.require_image:
            raise RowError("missing_image_column", f"no image (looked for {IMAGE_KEYS})")
        return [self._decode(key, v) for v in values]

    def _decode(self, key: str, value: Any):
        src = self._image_source(key, value)
        if isinstance(src, Path) and not src.is_file():
            raise RowError("missing_image", f"column {key!r}: image file {src} does not exist")
        try:
            return decode_image(src, self.cfg.image_backend, self.cfg.max_image_pixels)
        except ImageTooLarge as err:
            raise RowError("image_too_large", f"column {key!r}: {err}") from err
        except ValueError as err:
            raise RowError("corrupt_image", f"column {key!r}: {err}") from err

    def _image_source(self, key: str, value: Any) -> bytes | Path:
        """Encoded bytes or a resolved file path for one image value."""
        if isinstance(value, dict):  # Hugging Face Image feature: {"bytes": ..., "path": ...}
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if not isinstance(value, str) or not value:
            raise RowError("bad_image_value",
                           f"column {key!r}: image value of type {type(value).__name__}")
        if value.startswith("data:"):
            return _b64(key, value.partition(",")[2])
        path = self._resolve(value)
        if path is not None and (path.is_file() or value.lower().endswith(IMAGE_SUFFIXES)):
            return path
        try:
            return _b64(key, value)
        except RowError:
            if path is not None and re.search(r"[/\\.]", value):
                return path  # reported as a missing file, the likelier mistake
            raise

    def _resolve(self, value: str) -> Path | None:
        """`value` as a path relative to the data file; None when too long to be one."""
        if len(value) > 4096 or "\n" in value or "\x00" in value:
            return None
        path = Path(value)
        return path if path.is_absolute() else self.path.parent / path


def check_readable(path: Path, what: str) -> None:
    """Refuse a path that is missing, not a regular file, or not readable by this process."""
    if not path.exists():
        raise ValueError(f"{what} {path} does not exist")
    if not path.is_file():
        raise ValueError(f"{what} {path} is not a regular file")
    try:
        with path.open("rb"):
            pass
    except OSError as err:
        raise ValueError(f"{what} {path} cannot be read: {err.strerror}") from err


def _b64(key: str, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise RowError("bad_image_value", f"column {key!r}: image string is neither a file path "
                       f"nor valid base64 ({err})") from err


def read_tasks(path: str | Path, cfg: ReaderConfig | None = None) -> tuple[list[Task],
                                                                            ReaderStats]:
    """All tasks of a file, with the reader's stats."""
    reader = TaskReader(path, cfg)
    tasks = list(reader)
    return tasks, reader.stats
