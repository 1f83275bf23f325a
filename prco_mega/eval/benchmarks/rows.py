"""Raw rows of a benchmark file, in every format the publishers ship: parquet, TSV, JSONL, and JSON
(a list of rows, or an object of rows keyed by id as LogicVista's GitHub `dataset.json` is).

A `Row` is one raw row with its place (file, row number, its key in a keyed JSON) and typed
getters that raise `RowError`; a `BenchItem` is what a row reader makes of it: a `Task` whose
images stay encoded until `task_with_images` decodes them, so a benchmark of large screenshots is
never held decoded in memory. Text files may start with a UTF-8 byte-order mark.
"""
from __future__ import annotations

import ast
import base64
import binascii
import csv
import dataclasses
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prco_mega.data.images import (
    DEFAULT_MAX_PIXELS,
    decode_image,
    image_size,
    resize_to_grid,
)
from prco_mega.data.reader import RowError, _iter_jsonl, _iter_parquet
from prco_mega.types import Task

LETTERS = "ABCDEFGHIJ"
DATA_SUFFIXES = (".parquet", ".tsv", ".jsonl", ".json")
KEY_FIELD = "_key"
"""Where a row of a keyed JSON object (`{"v1_0": {...}}`) keeps its key."""


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

    def check_images(self) -> None:
        """Each image's header read (cheap: no pixel decoded), so that data that is no image
        is refused with the rows, before an engine starts; RowError when one is not."""
        for src in self.image_sources:
            try:
                image_size(src)
            except ValueError as err:  # ImageTooLarge is one too
                raise RowError("corrupt_image", str(err)) from err


@dataclass
class Row:
    """One raw row and its place, with typed getters that raise RowError."""

    values: dict[str, Any]
    file: Path
    number: int
    image_dirs: tuple[Path, ...] = ()
    """Folders a relative image path may be relative to, after the data file's own."""

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

    def images(self, *keys: str) -> list[bytes | Path]:
        """The encoded images of the first present column among `keys`."""
        key = next((k for k in keys if self.get(k) is not None), None)
        if key is None:
            raise RowError("missing_image", f"no image (looked for columns {keys})")
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
        """`value` as an existing file (absolute, or relative to the data file's folder or one
        of `image_dirs`), else None."""
        try:
            if Path(value).is_absolute():
                return Path(value) if Path(value).is_file() else None
            for folder in (self.file.parent, *self.image_dirs):
                if (folder / value).is_file():
                    return folder / value
        except (OSError, ValueError):  # base64 text is no valid path (too long, NUL)
            return None
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
            except (ValueError, SyntaxError):
                value = [value]  # one bare value, as some TSVs write a one-element list
        if not isinstance(value, (list, tuple)):
            value = [value]
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


# ---------------------------------------------------------------------------------- formats


def _iter_tsv(path: Path) -> Iterator[tuple[int, Any]]:
    csv.field_size_limit(sys.maxsize)  # base64 images are long fields
    with path.open(newline="", encoding="utf-8-sig") as f:
        yield from enumerate(csv.DictReader(f, delimiter="\t"), start=1)


def _iter_json(path: Path) -> Iterator[tuple[int, Any]]:
    """Rows of a JSON list, or of a JSON object of rows keyed by id (the key is kept in the row
    as `KEY_FIELD`). A file that is neither is a folder problem (ValueError)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from err
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        rows: list[Any] = [{KEY_FIELD: key, **value} for key, value in data.items()]
    elif isinstance(data, list):
        rows = data
    else:
        raise ValueError(f"{path}: JSON is neither a list of rows nor an object of rows by id")
    yield from enumerate(rows, start=1)


def iter_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based row number, raw row or RowError) of a data file, by its suffix."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _iter_parquet(path)
    if suffix == ".tsv":
        return _iter_tsv(path)
    return _iter_jsonl(path) if suffix == ".jsonl" else _iter_json(path)
