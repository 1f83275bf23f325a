"""Bad input, as a user would give it to the `prco-mega` command (issue 22).

Each case writes its files, runs the command in a subprocess and checks: exit code 2 and exactly
one stderr line (the message below, word for word), no run or output directory left behind, and
nothing heavy started (the command returns in seconds). Skip-mode cases exit 0 and print the
counts. `docs/bad_input.md` is rendered from CASES: a test fails when the page and the table
differ; rewrite it with `PRCO_WRITE_DOCS=1 pytest tests/test_bad_input.py`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from bad_files import bomb_png

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad_input.md"
GOOD_PNG = bytes.fromhex(  # 1x1 RGB PNG
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415478"
    "9c63f8cfc0000003010100c9fe92ef0000000049454e44ae426082")


@dataclass(frozen=True)
class Case:
    input: str
    """What is wrong, as the page's first column says it."""
    argv: str
    """The command after `prco-mega`, run in the folder the case wrote."""
    write: Callable[[Path], None]
    """Writes the case's files into that folder."""
    output: str
    """The one line the command prints: stderr when it refuses (exit 2), stdout when it runs."""
    exit_code: int = 2


def row(question: str = "q", image: str = "good.png", **extra) -> bytes:
    return json.dumps({"question": question, "answer": "1", "image": image, **extra}).encode()


def data_files(*rows: bytes, images: dict[str, bytes] | None = None) -> Callable[[Path], None]:
    """A jsonl data file of `rows`, a good image, and a run config that reads them."""
    def write(folder: Path) -> None:
        (folder / "good.png").write_bytes(GOOD_PNG)
        for name, data in (images or {}).items():
            (folder / name).write_bytes(data)
        (folder / "data.jsonl").write_bytes(b"".join(r + b"\n" for r in rows))
        (folder / "run.yaml").write_text("run: {output_dir: runs}\n"
                                         "data: {source: jsonl, path: data.jsonl}\n")
    return write


def text_file(name: str, content: bytes) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        data_files(row())(folder)
        (folder / name).write_bytes(content)
    return write


def checkpoint(weights: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """A Hugging Face folder `src` with the tiny model's config.json and damaged weights."""
    def write(folder: Path) -> None:
        import torch
        from safetensors.torch import save as save_bytes

        (folder / "src").mkdir()
        (folder / "src" / "config.json").write_text(tiny_config_json())
        good = save_bytes({"model.embed_tokens.weight": torch.zeros(4, 4)})
        (folder / "src" / "model.safetensors").write_bytes(weights(good))
    return write


_TINY_CONFIG: list[str] = []


def tiny_config_json() -> str:
    if not _TINY_CONFIG:
        from prco_mega.families.qwen2_5_vl.tiny import tiny_qwen25vl_config

        _TINY_CONFIG.append(tiny_qwen25vl_config().to_json_string())
    return _TINY_CONFIG[0]


LATIN1 = '{"question": "caf\xe9?", "answer": "1", "image": "good.png"}'.encode("latin-1")
YAML_BROKEN = b"run: {output_dir: runs}\ndata: [1, 2\nsolver: {}\n"
CASES = [
    Case("data.path is missing", "train run.yaml data.path=absent.jsonl", data_files(row()),
         "prco-mega: error: data file absent.jsonl does not exist"),
    Case("data.path is a folder", "train run.yaml data.path=images.jsonl",
         lambda d: (data_files(row())(d), (d / "images.jsonl").mkdir()),
         "prco-mega: error: data file images.jsonl is not a regular file"),
    Case("data file is not parquet", "train run.yaml data.path=data.parquet",
         lambda d: (data_files(row())(d), (d / "data.parquet").write_bytes(b"not parquet")),
         "prco-mega: error: data file data.parquet is not a readable parquet file: Parquet "
         "magic bytes not found in footer. Either the file is corrupted or this is not a "
         "parquet file."),
    Case("a JSONL line is not UTF-8", "train run.yaml", data_files(row(), LATIN1, row()),
         "prco-mega: error: data.jsonl: row 2: not UTF-8 (byte 0xe9 at position 17)"),
    Case("a JSONL line is not UTF-8, skip mode", "data check run.yaml data.on_error=skip",
         data_files(row(), LATIN1, row()),
         "data: 2 tasks from data.jsonl (3 rows; skipped 1 bad_encoding)", exit_code=0),
    Case("a decompression bomb (20000x20000 PNG, 48 kB)", "train run.yaml",
         data_files(row(), row(image="bomb.png"), images={"bomb.png": bomb_png()}),
         "prco-mega: error: data.jsonl: row 2: column 'image': image bomb.png is too large: "
         "Image size (400000000 pixels) exceeds limit of 178956970 pixels, could be "
         "decompression bomb DOS attack. (limit 89478485, data.max_image_pixels)"),
    Case("an image over data.max_image_pixels", "train run.yaml data.max_image_pixels=1",
         data_files(row(image="big.png"), images={"big.png": bomb_png(2)}),
         "prco-mega: error: data.jsonl: row 1: column 'image': image big.png is 2x2 (4 pixels), "
         "over the limit of 1 (data.max_image_pixels)"),
    Case("images over the limit, skip mode",
         "data check run.yaml data.max_image_pixels=3 data.on_error=skip",
         data_files(row(), row(image="big.png"), row(), images={"big.png": bomb_png(2)}),
         "data: 2 tasks from data.jsonl (3 rows; skipped 1 image_too_large)", exit_code=0),
    Case("no usable row (skip mode)", "train run.yaml data.on_error=skip",
         data_files(LATIN1, row(image="absent.png")),
         "prco-mega: error: data file data.jsonl has no usable row (2 rows; skipped "
         "1 bad_encoding, 1 missing_image)"),
    Case("config file is not valid YAML", "train broken.yaml",
         text_file("broken.yaml", YAML_BROKEN),
         "prco-mega: error: config file 'broken.yaml' is not valid YAML: expected ',' or ']', "
         "but got ':' at line 3, column 7"),
    Case("config file is not valid YAML (plan)", "plan broken.yaml",
         text_file("broken.yaml", YAML_BROKEN),
         "prco-mega: error: config file 'broken.yaml' is not valid YAML: expected ',' or ']', "
         "but got ':' at line 3, column 7"),
    Case("config file is not valid YAML (launch)", "launch broken.yaml --dry-run",
         text_file("broken.yaml", YAML_BROKEN),
         "prco-mega: error: config file 'broken.yaml' is not valid YAML: expected ',' or ']', "
         "but got ':' at line 3, column 7"),
    Case("an override is not valid YAML", "train run.yaml data.families={polygons: 1",
         data_files(row()),
         "prco-mega: error: override 'data.families={polygons: 1': the value is not valid YAML "
         "(expected ',' or '}', but got '<stream end>' at line 1, column 27)"),
    Case("config file is binary", "train weights.bin",
         text_file("weights.bin", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
         "prco-mega: error: config file 'weights.bin' is not a YAML text file (byte 0x89 at "
         "position 0 is not UTF-8)"),
    Case("truncated safetensors file", "convert --direction hf2mcore --src src --dst out",
         checkpoint(lambda good: good[:-8]),
         "prco-mega: error: weight file src/model.safetensors is truncated or not a safetensors "
         "file: Error while deserializing header: incomplete metadata, file not fully covered"),
    Case("corrupt safetensors header", "convert --direction hf2mcore --src src --dst out",
         checkpoint(lambda good: good[:8] + b"{garbage" + good[16:]),
         "prco-mega: error: weight file src/model.safetensors is truncated or not a safetensors "
         "file: Error while deserializing header: invalid JSON in header: key must be a string "
         "at line 1 column 2"),
]


def _argv(case: Case) -> list[str]:
    """`argv` split on spaces, except inside {...} (an override's YAML value)."""
    out, depth = [""], 0
    for ch in case.argv:
        depth += (ch == "{") - (ch == "}")
        if ch == " " and depth == 0:
            out.append("")
        else:
            out[-1] += ch
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.input for c in CASES])
def test_bad_input_gets_one_line_and_nothing_starts(case, tmp_path):
    case.write(tmp_path)
    before = {p.name for p in tmp_path.iterdir()}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "prco_mega.cli", *_argv(case)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    lines = (done.stderr if case.exit_code else done.stdout).splitlines()
    assert (done.returncode, lines) == (case.exit_code, [case.output]), done.stderr[-3000:]
    if case.exit_code:
        assert done.stdout == ""
    assert {p.name for p in tmp_path.iterdir()} == before  # no runs/, out/ or other leftovers
    assert seconds < 60, f"{seconds:.0f} s: something heavy started"


def render_doc() -> str:
    """docs/bad_input.md from CASES."""
    head = ("# Bad input and what it gets\n\n"
            "Generated from `tests/test_bad_input.py`, which runs each command and checks its "
            "line word for word\n(rewrite with `PRCO_WRITE_DOCS=1 pytest tests/test_bad_input.py`)."
            " A refusal exits with code 2,\nprints one line on stderr, starts nothing heavy and "
            "leaves no output directory. Skip mode\n(`data.on_error=skip`) drops only the bad rows "
            "and prints the counts. An internal error keeps its\ntraceback. Transparent images "
            "are not an error: they are composited onto white, as vLLM does.\n\n"
            "| Input | Command (`prco-mega ...`) | Exit | Output |\n|---|---|---|---|\n")
    cell = lambda text: text.replace("|", "\\|")  # noqa: E731
    return head + "".join(f"| {cell(c.input)} | `{cell(c.argv)}` | {c.exit_code} | "
                          f"{cell(c.output)} |\n" for c in CASES)


def test_doc_table_is_the_tested_table():
    if os.environ.get("PRCO_WRITE_DOCS") == "1":
        DOC.write_text(render_doc())
    assert DOC.is_file() and DOC.read_text() == render_doc(), \
        "docs/bad_input.md differs from CASES: rerun with PRCO_WRITE_DOCS=1"


def test_internal_error_keeps_its_traceback(monkeypatch):
    from prco_mega import cli

    def broken(args):
        raise RuntimeError("a bug, not the user's input")

    monkeypatch.setattr(cli, "_data_check", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["data", "check", "run.yaml"])
