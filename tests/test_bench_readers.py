"""The benchmark readers: both layouts (Hugging Face exports, VLMEvalKit TSV) read as the same
items; bad rows are refused naming file and row, or counted with on_error="skip"."""
from __future__ import annotations

import csv
import json

import pytest
from bench_data import EXPECTED, NAMES, _b64, png, write_root

from prco_mega.eval.benchmarks.readers import (BY_NAME, find_folder, gold_letter, options_in_text,
                                       question_stem, read_benchmark, select)


@pytest.fixture(scope="module", params=["hf", "tsv"])
def root(request, tmp_path_factory):
    return write_root(tmp_path_factory.mktemp(request.param) / "data", request.param)


@pytest.mark.parametrize("name", NAMES)
def test_each_layout_reads_the_rows_as_the_benchmark_defines_them(root, name):
    bench = BY_NAME[name]
    items = read_benchmark(bench, find_folder(root, bench)).items
    assert len(items) == len(EXPECTED[name])
    for item, (question, answer, options, group) in zip(items, EXPECTED[name], strict=True):
        task = item.task
        if question is not None:
            assert task.question == question
        assert (task.answer, task.meta["options"], task.meta["group"]) == (answer, options, group)
        assert task.family == name and task.choices is None  # options are in the question text
        if options:  # every option is shown, in order, unless the image holds them (MMMU-Pro)
            shown = [o for o in options if o in task.question]
            assert shown == options or name == "mmmu_pro_v"
        image = item.task_with_images().images[0]
        assert image.mode == "RGB" and image.size == (56, 56)
    assert len({i.task.uid for i in items}) == len(items)


def test_benchmark_specific_fields(root):
    def meta(name):
        return [i.task.meta for i in read_benchmark(BY_NAME[name],
                                                    find_folder(root, BY_NAME[name])).items]

    assert [(m["seed"], m["variant"]) for m in meta("dynamath")] == [
        ("1", "1"), ("2", "1"), ("1", "2"), ("2", "2")]
    assert [m["answer_type"] for m in meta("dynamath")] == ["float", "multiple choice"] * 2
    assert [(m["wemath_id"], m["wemath_key"]) for m in meta("wemath")] == [
        ("p1", "2steps_1"), ("p1", "2steps_2"), ("p1", "2steps_multi"), ("p2", "1step")]
    vista = meta("mathvista")
    assert [m["answer_type"] for m in vista] == ["text", "integer", "float", "list"]
    assert float(vista[2]["precision"]) == 2.0
    assert [m["kind"] for m in meta("logicvista")] == ["letters"] * 3
    assert [m["kind"] for m in meta("mathverse")] == ["choice", "free", "free"]


def test_question_stem_drops_hints_and_image_tags():
    assert question_stem("Hint: Please answer.\nQuestion: What is x? <image1>") == "What is x?"
    assert question_stem("<image 2> Find the area.") == "Find the area."


def test_options_in_text_and_gold_letters():
    assert options_in_text("Pick one. Options: A: red, B: blue, C: green") == [
        "red", "blue", "green"]
    assert options_in_text("Choices:\n(A) 3/11 (B) 8/11") == ["3/11", "8/11"]
    assert options_in_text("Point A is on the circle.") is None
    assert gold_letter("8/11", ["3/11", "8/11"]) == "B"
    assert gold_letter("(b)", ["x", "y"]) == "B"
    with pytest.raises(ValueError, match="neither an option letter"):
        gold_letter("F", ["x", "y"])


def _tsv(path, rows):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)


def _mmstar_row(index, answer="A", image=None):
    return {"index": index, "question": "Which?", "A": "x", "B": "y", "answer": answer,
            "category": "c", "image": _b64(1) if image is None else image}


def test_bad_rows_name_file_and_row_or_are_counted(tmp_path):
    folder = tmp_path / "MMStar"  # folder names match case-insensitively
    folder.mkdir()
    _tsv(folder / "mmstar.tsv", [_mmstar_row(0), _mmstar_row(1, answer=""),
                                 _mmstar_row(2, image="not base64 !"), _mmstar_row(3, answer="Q"),
                                 _mmstar_row(0)])
    bench = BY_NAME["mmstar"]
    with pytest.raises(ValueError, match=r"mmstar\.tsv: row 2: no value in column answer"):
        read_benchmark(bench, find_folder(tmp_path, bench))
    result = read_benchmark(bench, folder, on_error="skip")
    assert [i.task.uid for i in result.items] == ["0"]
    assert result.skipped == {"missing_column": 1, "bad_image": 1, "bad_answer": 1,
                              "duplicate_uid": 1}


def test_corrupt_image_bytes_are_refused_when_decoded(tmp_path):
    folder = tmp_path / "mmstar"
    folder.mkdir()
    _tsv(folder / "mmstar.tsv", [_mmstar_row(0, image=_b64(1)[:40] + "AAAA")])
    item = read_benchmark(BY_NAME["mmstar"], folder).items[0]
    with pytest.raises(ValueError, match="cannot be decoded"):
        item.task_with_images()


def test_missing_folders_limits_and_selection(tmp_path, root):
    assert find_folder(tmp_path, BY_NAME["wemath"]) is None
    with pytest.raises(ValueError, match="not a directory"):
        find_folder(tmp_path / "nope", BY_NAME["wemath"])
    bench = BY_NAME["dynamath"]
    assert len(read_benchmark(bench, find_folder(root, bench), limit=3).items) == 3
    assert [b.name for b in select("mmstar,mathverse")] == ["mathverse", "mmstar"]
    assert [b.name for b in select("all")] == list(NAMES)
    with pytest.raises(ValueError, match="unknown benchmark"):
        select("mathverse,mmbench")
    (tmp_path / "logicvista").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        read_benchmark(BY_NAME["logicvista"], tmp_path / "logicvista")


def test_options_shown_only_in_the_image_are_scored_by_letter(tmp_path):
    """MathVerse's vision versions ask for a letter whose options only the image shows;
    MathVista rows without a `choices` column carry them in the question text."""
    folder = tmp_path / "mathverse"
    folder.mkdir()
    (folder / "1.png").write_bytes(png(1))
    vision_only = ("According to the question shown in the image, please directly answer the "
                   "question and provide the correct option letter, e.g., A, B, C, D.")
    row = {"sample_index": "7", "problem_version": "Vision Only", "question": vision_only,
           "image": "1.png", "answer": "C", "question_type": "multi-choice"}
    (folder / "testmini.jsonl").write_text(json.dumps(row) + "\n")
    task = read_benchmark(BY_NAME["mathverse"], folder).items[0].task
    assert (task.question, task.answer, task.meta["options"]) == (vision_only, "C", None)
    assert task.meta["kind"] == "choice"

    folder = tmp_path / "mathvista"
    folder.mkdir()
    _tsv(folder / "MathVista_MINI.tsv", [{
        "index": 1, "question": "Question: Which is blue?\nChoices:\n(A) sky\n(B) grass",
        "answer": "sky", "question_type": "multi_choice", "answer_type": "text",
        "image": _b64(1)}])
    task = read_benchmark(BY_NAME["mathvista"], folder).items[0].task
    assert (task.answer, task.meta["options"]) == ("A", ["sky", "grass"])
    assert task.question == "Which is blue?\nChoices:\n(A) sky\n(B) grass"


def test_large_images_are_resized_onto_the_patch_grid(tmp_path):
    import base64
    import io

    from PIL import Image

    folder = tmp_path / "mmstar"
    folder.mkdir()
    big = io.BytesIO()
    Image.new("RGB", (2000, 1500), (200, 30, 30)).save(big, format="PNG")
    _tsv(folder / "mmstar.tsv", [_mmstar_row(0, image=base64.b64encode(big.getvalue()).decode())])
    item = read_benchmark(BY_NAME["mmstar"], folder).items[0]
    image = item.task_with_images(max_pixels=1280 * 28 * 28).images[0]
    assert image.width % 28 == 0 and image.height % 28 == 0
    assert image.width * image.height <= 1280 * 28 * 28
    assert abs(image.width / image.height - 4 / 3) < 0.05  # aspect kept as the grid allows
    assert item.task_with_images(max_pixels=None).images[0].size == (2000, 1500)
