"""Reading local RL data: common layouts load, every bad row is named or counted, none vanish."""
import base64
import io
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from bad_files import bomb_png
from prco_mega.data.reader import ReaderConfig, TaskReader, read_tasks


def png(seed: int, size=(20, 16)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def pixels_of(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def write_jsonl(path, rows) -> None:
    """Rows are objects (dumped), text lines, or raw bytes lines (for encodings)."""
    lines = [r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode()
             for r in rows]
    path.write_bytes(b"".join(line + b"\n" for line in lines))


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png(1))
    (tmp_path / "images" / "b.png").write_bytes(png(2))
    (tmp_path / "images" / "broken.png").write_bytes(png(3)[:60])
    (tmp_path / "images" / "bomb.png").write_bytes(bomb_png())
    return tmp_path


GOOD_ROWS = [
    {"qid": "q1", "question": "<image>How many?", "answer": "\\boxed{3}", "image": "images/a.png"},
    {"problem": "Two images?", "solution": "12", "images": ["images/a.png", "images/b.png"]},
    {"prompt": "b64?", "gold": "1/2", "image_bytes": base64.b64encode(png(2)).decode()},
    {"question": "data url?", "answer": "B", "choices": ["1", "2"],
     "image": "data:image/png;base64," + base64.b64encode(png(1)).decode()},
]


def test_good_rows_in_every_layout(data_dir):
    path = data_dir / "train.jsonl"
    write_jsonl(path, GOOD_ROWS)
    tasks, stats = read_tasks(path)
    assert (stats.rows, stats.tasks, sum(stats.skipped.values())) == (4, 4, 0)
    assert [t.uid for t in tasks] == ["q1", "train:2", "train:3", "train:4"]
    assert [t.question for t in tasks] == ["How many?", "Two images?", "b64?", "data url?"]
    assert [t.answer for t in tasks] == ["3", "12", "1/2", "B"]  # whole-answer \boxed{} unwrapped
    assert [len(t.images) for t in tasks] == [1, 2, 1, 1]
    assert tasks[3].choices == ["1", "2"] and tasks[0].choices is None
    assert all(t.family == "train" for t in tasks)
    # relative paths resolve against the data file, and pixels survive
    expected = [png(1), png(1), png(2), png(2), png(1)]
    decoded = [im for t in tasks for im in t.images]
    assert all(np.array_equal(np.asarray(im), pixels_of(d)) for im, d in zip(decoded, expected))


BAD_ROWS = {  # row number (1-based) -> (row, skip reason, words the error must contain)
    2: ({"question": "q", "answer": "1", "image": "images/broken.png"}, "corrupt_image",
        ["image", "broken.png", "cannot be decoded"]),
    3: ({"question": "q", "answer": "1", "image": "images/missing.png"}, "missing_image",
        ["missing.png", "does not exist"]),
    4: ({"question": "q", "image": "images/a.png"}, "missing_answer", ["no answer"]),
    5: ('{"question": "q", "answer": ', "malformed_json", ["invalid JSON"]),
    6: ({"question": "q", "answer": "1"}, "missing_image_column", ["no image"]),
    7: ({"question": "q", "answer": "1", "image": "%%%not base64%%%"}, "bad_image_value",
        ["neither a file path nor valid base64"]),
    8: ('{"question": "caf\xe9?", "answer": "1", "image": "images/a.png"}'.encode("latin-1"),
        "bad_encoding", ["not UTF-8", "byte 0xe9 at position 17"]),
    9: ({"question": "q", "answer": "1", "image": "images/bomb.png"}, "image_too_large",
        ["bomb.png", "too large", "400000000 pixels"]),
}


def bad_file(data_dir):
    path = data_dir / "mixed.jsonl"
    rows = [GOOD_ROWS[0]] + [BAD_ROWS[n][0] for n in sorted(BAD_ROWS)] + [GOOD_ROWS[1]]
    write_jsonl(path, rows)
    return path


@pytest.mark.parametrize("row_number", sorted(BAD_ROWS))
def test_bad_row_raises_naming_file_row_and_reason(data_dir, row_number):
    path = data_dir / "one_bad.jsonl"
    write_jsonl(path, [GOOD_ROWS[0]] * (row_number - 1) + [BAD_ROWS[row_number][0]])
    with pytest.raises(ValueError) as err:
        list(TaskReader(path))
    message = str(err.value)
    assert "one_bad.jsonl" in message and f"row {row_number}:" in message, message
    for words in BAD_ROWS[row_number][2]:
        assert words in message, message


def test_skip_counts_every_bad_row(data_dir):
    path = bad_file(data_dir)
    reader = TaskReader(path, ReaderConfig(on_error="skip"))
    tasks = list(reader)
    assert [t.uid for t in tasks] == ["q1", f"mixed:{len(BAD_ROWS) + 2}"]
    assert dict(reader.stats.skipped) == {reason: 1 for _, reason, _ in BAD_ROWS.values()}
    assert reader.stats.rows == reader.stats.tasks + sum(reader.stats.skipped.values()) == 10


def test_image_over_the_configured_limit_is_a_row_error_in_both_modes(data_dir):
    path = data_dir / "small_limit.jsonl"
    write_jsonl(path, GOOD_ROWS[:2])  # 20x16 px images: 320 pixels
    with pytest.raises(ValueError, match=r"row 1: .*a\.png is 20x16 \(320 pixels\), over the "
                                         r"limit of 319 \(data\.max_image_pixels\)"):
        read_tasks(path, ReaderConfig(max_image_pixels=319))
    tasks, stats = read_tasks(path, ReaderConfig(max_image_pixels=319, on_error="skip"))
    assert tasks == [] and dict(stats.skipped) == {"image_too_large": 2}
    assert len(read_tasks(path, ReaderConfig(max_image_pixels=320))[0]) == 2


def test_parquet_with_bytes_structs_and_paths(data_dir):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({
        "problem": ["first", "second"],
        "answer": ["7", "\\boxed{8}"],
        "images": [[{"bytes": png(1), "path": None}], [{"bytes": None, "path": "images/b.png"}]],
        "id": [10, 11],
    })
    pq.write_table(table, data_dir / "virl.parquet")
    tasks, stats = read_tasks(data_dir / "virl.parquet")
    assert [(t.uid, t.question, t.answer) for t in tasks] == [("10", "first", "7"),
                                                             ("11", "second", "8")]
    assert np.array_equal(np.asarray(tasks[0].images[0]), pixels_of(png(1)))
    assert np.array_equal(np.asarray(tasks[1].images[0]), pixels_of(png(2)))


def test_parquet_bad_row_is_named(data_dir):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"question": ["a", "b"], "answer": ["1", None],
                      "image": [png(1), png(2)]})
    pq.write_table(table, data_dir / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet: row 2: no answer"):
        list(TaskReader(data_dir / "bad.parquet"))


def test_parquet_without_pyarrow_names_the_package(data_dir, monkeypatch):
    (data_dir / "x.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # makes the import fail
    with pytest.raises(ValueError, match="needs the package pyarrow"):
        list(TaskReader(data_dir / "x.parquet"))


def test_dali_backend_reads_the_same_pixels(data_dir):
    pytest.importorskip("nvidia.dali")
    path = data_dir / "train.jsonl"
    write_jsonl(path, GOOD_ROWS[:2])
    pil, _ = read_tasks(path)
    dali, _ = read_tasks(path, ReaderConfig(image_backend="dali"))
    for a, b in zip(pil, dali):
        assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.images, b.images))


def test_config_and_file_errors(data_dir):
    with pytest.raises(ValueError, match="on_error"):
        ReaderConfig(on_error="ignore")
    with pytest.raises(ValueError, match=r"\.csv"):
        TaskReader(data_dir / "train.csv")
    with pytest.raises(ValueError, match="does not exist"):
        TaskReader(data_dir / "absent.jsonl")
    (data_dir / "folder.jsonl").mkdir()
    with pytest.raises(ValueError, match=r"folder\.jsonl is not a regular file"):
        TaskReader(data_dir / "folder.jsonl")
    locked = data_dir / "locked.jsonl"
    write_jsonl(locked, GOOD_ROWS[:1])
    locked.chmod(0)
    if not os.access(locked, os.R_OK):  # root reads anything
        with pytest.raises(ValueError, match=r"locked\.jsonl cannot be read: Permission denied"):
            TaskReader(locked)
    (data_dir / "garbage.parquet").write_bytes(b"not parquet at all")
    pytest.importorskip("pyarrow")
    with pytest.raises(ValueError, match=r"garbage\.parquet is not a readable parquet file"):
        list(TaskReader(data_dir / "garbage.parquet"))


def test_a_utf8_bom_before_the_first_line_reads_like_the_same_file_without_it(data_dir):
    """Editors and spreadsheet exports often start UTF-8 files with a byte-order mark: the
    tasks, and the training stream walked over them, are those of the file without it."""
    from prco_mega.data.stream import list_stream

    plain, bom = data_dir / "plain.jsonl", data_dir / "bom.jsonl"
    write_jsonl(plain, GOOD_ROWS)
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    (a, _), (b, stats_b) = read_tasks(plain), read_tasks(bom)
    assert (stats_b.rows, stats_b.tasks, dict(stats_b.skipped)) == (4, 4, {})
    assert [(t.uid, t.question, t.answer, t.choices) for t in b] == [
        (t.uid.replace("plain", "bom"), t.question, t.answer, t.choices) for t in a]
    assert all(np.array_equal(np.asarray(x), np.asarray(y))
               for s, t in zip(a, b) for x, y in zip(s.images, t.images))
    streams = [list_stream(tasks, 2, seed=3) for tasks in (a, b)]
    walks = [[t.question for _ in range(3) for t in s.next_batch()] for s in streams]
    assert walks[0] == walks[1]
