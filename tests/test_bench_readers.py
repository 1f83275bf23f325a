"""Benchmarks as their publishers ship them: every layout (hub repo downloads with subfolders and
README configs, GitHub layouts, VLMEvalKit's flat TSV folder) is found and read as the same
items, `prco-mega eval --check` counts every file's rows, a split shipped twice is read once,
non-data files are never rows, and bad rows and folders are named or counted."""
from __future__ import annotations

import base64
import csv
import io
import json

import pytest
from bench_data import (
    CHECK_ROWS,
    EXPECTED,
    HUB_FOLDERS,
    LOGICVISTA,
    MATHVISION_TESTMINI,
    NAMES,
    ROWS,
    TSV_NAMES,
    _b64,
    write_hub,
    write_root,
)

from prco_mega.cli import main
from prco_mega.eval.benchmarks.discovery import check, find, find_folder, load
from prco_mega.eval.benchmarks.readers import (
    gold_letter,
    options_in_text,
    question_stem,
)
from prco_mega.eval.benchmarks.registry import BY_NAME, parse_splits, select


@pytest.fixture(scope="module", params=["hub", "tsv"])
def root(request, tmp_path_factory):
    return write_root(tmp_path_factory.mktemp(request.param) / "data", request.param)


def _items(root, name, split=None):
    return load(find(root, BY_NAME[name], split)).items


@pytest.mark.parametrize("name", NAMES)
def test_each_layout_reads_the_rows_as_the_benchmark_defines_them(root, name):
    items = _items(root, name)
    assert len(items) == len(EXPECTED[name])
    for item, (question, answer, options, group) in zip(items, EXPECTED[name], strict=True):
        task = item.task
        if question is not None:
            assert task.question == question
        assert (task.answer, task.meta["options"], task.meta["group"]) == (answer, options, group)
        assert task.family == name and task.choices is None  # options are in the question text
        if options and name not in ("mmmu_pro_v", "mathverse"):  # not only in the image
            assert [o for o in options if o in task.question] == options
        image = item.task_with_images().images[0]
        assert image.mode == "RGB" and image.size == (56, 56)
    assert len({i.task.uid for i in items}) == len(items)


def _check_output(capsys, *args) -> tuple[int, str]:
    code = main(["eval", *args, "--check"])
    return code, capsys.readouterr().out


def _section(out: str, title: str) -> str:
    blocks = out.split("\n" + title + ":")
    assert len(blocks) == 2 or out.startswith(title + ":"), out
    text = blocks[-1] if len(blocks) == 2 else out[len(title) + 1:]
    return text.split("\n", 1)[0] + "\n" + "".join(
        line + "\n" for line in text.split("\n")[1:] if line.startswith("  ")).split("\n\n")[0]


def test_check_finds_and_reads_every_publishers_layout_with_the_right_row_counts(tmp_path,
                                                                               capsys):
    root = write_root(tmp_path / "hub", "hub")
    code, out = _check_output(capsys, "--data-root", str(root))
    assert code == 0 and "PROBLEM" not in out
    for name, (files, items) in CHECK_ROWS.items():
        section = _section(out, BY_NAME[name].title)
        assert f"folder {root / HUB_FOLDERS[name]}" in section
        assert f"split {BY_NAME[name].default_split} (the paper's)" in section
        for file, rows in files.items():
            assert any(file in line and line.endswith(f": {rows} rows")
                       for line in section.splitlines() if line.startswith("  read ")), section
        assert f"items {items}, skipped rows: none" in section
    # what is not read, and why
    assert "MMStar.tsv: the same split as the hub parquet copy, not read" in out
    assert "testmini.json: the same split as the hub parquet copy, not read" in out
    assert "testmini-00000-of-00001-f8ff70fcb2f29b1d.parquet: split 'testmini', not the" in out
    assert "source.json: not a MathVista data file" in out
    assert "knowledge_structure_nodes.json: not a WeMath data file" in out
    assert "test-00000-of-00001.parquet: split 'standard (10 options)' of the README" in out

    flat = write_root(tmp_path / "flat", "tsv")
    code, out = _check_output(capsys, "--data-root", str(flat))
    assert code == 0
    for name in NAMES:
        section = _section(out, BY_NAME[name].title)
        assert f"folder {flat / 'LMUData'}" in section
        assert f"read {TSV_NAMES[name]}.tsv (VLMEvalKit TSV): {len(EXPECTED[name])} rows" in section


def test_splits_are_chosen_per_benchmark_and_listed_in_help(tmp_path, capsys):
    root = write_root(tmp_path / "hub", "hub")
    assert len(_items(root, "mathvision", "testmini")) == MATHVISION_TESTMINI
    vision_only = _items(root, "mathverse", "vision_only")
    assert [i.task.meta["group"] for i in vision_only] == ["Vision Only"] * 2
    assert [i.task.meta["variant"] for i in _items(root, "dynamath", "sample_variant2")] == [
        "2", "2"]
    code, out = _check_output(capsys, "--data-root", str(root), "--benchmarks", "mathvision",
                              "--split", "mathvision=testmini")
    assert code == 0 and f"items {MATHVISION_TESTMINI}" in out and "split testmini\n" in out
    assert parse_splits(["mathverse=vision_only,dynamath=sample_variant1"]) == {
        "mathverse": "vision_only", "dynamath": "sample_variant1"}
    with pytest.raises(ValueError, match="mathvision has splits"):
        parse_splits(["mathvision=val"])
    with pytest.raises(ValueError, match="BENCHMARK=SPLIT"):
        parse_splits(["mmbench=val"])
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "mathvision: test (or testmini)" in help_text
    assert "mathverse: testmini (or vision_only)" in help_text


def test_vlmevalkit_vision_only_file_and_hub_rows_read_alike(tmp_path):
    write_root(tmp_path, "hub")
    rows = [r for r in ROWS["mathverse"]()[1] if r["problem_version"] == "Vision Only"]
    flat = tmp_path / "flat"
    from bench_data import _tsv
    _tsv(flat / "MathVerse_MINI_Vision_Only.tsv", rows)
    hub = _items(tmp_path, "mathverse", "vision_only")
    tsv = _items(flat, "mathverse", "vision_only")
    assert [(i.task.question, i.task.answer, i.task.meta["options"]) for i in hub] == [
        (i.task.question, i.task.answer, i.task.meta["options"]) for i in tsv]
    assert hub[0].task.question.startswith("According to the question shown in the image")


def test_benchmark_specific_fields(root):
    def meta(name):
        return [i.task.meta for i in _items(root, name)]

    assert [(m["seed"], m["variant"]) for m in meta("dynamath")] == [
        ("1", "1"), ("2", "1"), ("1", "2"), ("2", "2")]
    assert [m["answer_type"] for m in meta("dynamath")] == ["float", "multiple choice"] * 2
    assert [(m["wemath_id"], m["wemath_key"]) for m in meta("wemath")] == [
        ("2steps_1", "2steps_1"), ("2steps_1", "2steps_2"), ("2steps_1", "2steps_multi"),
        ("2steps_2", "2steps_1")]
    vista = meta("mathvista")
    assert [m["answer_type"] for m in vista] == ["text", "integer", "float", "list"]
    assert float(vista[2]["precision"]) == 2.0 and vista[2]["unit"] == "$"
    assert [m["kind"] for m in meta("logicvista")] == ["letters"] * 4
    assert [m["kind"] for m in meta("mathverse")] == ["choice", "choice", "free", "free"]
    assert [m["l2"] for m in meta("mmstar")] == ["image scene and topic", "numeric"]


def test_mathvista_shows_unit_and_precision_as_the_official_query_does(root):
    float_row = _items(root, "mathvista")[2].task.question
    assert "(Unit: $)" in float_row and "two decimal places" in float_row


def test_logicvista_json_keys_are_uids_and_skills_lists(tmp_path):
    folder = write_hub("logicvista", tmp_path / "LogicVista")
    items = load(find(tmp_path, BY_NAME["logicvista"])).items
    assert [i.task.uid for i in items] == [key for key, *_ in LOGICVISTA]
    assert items[1].task.meta["group"] == ["spatial", "inductive"]
    assert items[3].task.answer == "3"  # "Select from 1-5": a digit answer reads
    assert (folder / "data" / "images" / "v1_0.png").is_file()


def test_a_utf8_bom_reads_like_the_same_files_without_it(tmp_path):
    plain = write_hub("logicvista", tmp_path / "plain" / "LogicVista")
    bom = write_hub("logicvista", tmp_path / "bom" / "LogicVista")
    path = bom / "data" / "dataset.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    rows = [dict(r, image=f"images/{r['id']}.jpg") for r in ROWS["mathvision"]()[0]]
    for base, mark in ((tmp_path / "plain", b""), (tmp_path / "bom", b"\xef\xbb\xbf")):
        folder = base / "math-v" / "data"
        (folder / "images").mkdir(parents=True)
        for k, r in enumerate(rows):
            (folder / r["image"]).write_bytes(base64.b64decode(_b64(20 + k)))
        text = "".join(json.dumps({k: v for k, v in r.items() if k != "decoded_image"}) + "\n"
                       for r in rows)
        (folder / "test.jsonl").write_bytes(mark + text.encode())
        tsv = base / "LMUData" / "MMStar.tsv"
        from bench_data import _tsv
        _tsv(tsv, ROWS["mmstar"]()[1])
        tsv.write_bytes(mark + tsv.read_bytes())
    for name in ("logicvista", "mathvision", "mmstar"):
        a = load(find(tmp_path / "plain", BY_NAME[name])).items
        b = load(find(tmp_path / "bom", BY_NAME[name])).items
        assert len(a) == len(EXPECTED[name]) and [
            (i.task.uid, i.task.question, i.task.answer) for i in a] == [
            (i.task.uid, i.task.question, i.task.answer) for i in b]
    assert plain.exists()


def test_question_stem_drops_hints_instructions_and_image_tags():
    assert question_stem("Hint: Please answer.\nQuestion: What is x? <image1>") == "What is x?"
    assert question_stem("<image 2> Find the area.") == "Find the area."
    assert question_stem("Please directly answer.\nQuestion: Find x.") == "Find x."
    assert question_stem("Find x.\nChoices:\nA:1\nB:2") == "Find x.\nChoices:\nA:1\nB:2"


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
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)


def _mmstar_row(index, answer="A", image=None):
    return {"index": index, "question": "Which?", "A": "x", "B": "y", "answer": answer,
            "category": "c", "image": _b64(1) if image is None else image}


def test_bad_rows_name_file_and_row_or_are_counted(tmp_path):
    _tsv(tmp_path / "MMStar" / "MMStar.tsv", [
        _mmstar_row(0), _mmstar_row(1, answer=""), _mmstar_row(2, image="not base64 !"),
        _mmstar_row(3, answer="Q"), _mmstar_row(0)])
    bench = BY_NAME["mmstar"]
    with pytest.raises(ValueError, match=r"MMStar\.tsv: row 2: no value in column answer"):
        load(find(tmp_path, bench))
    result = load(find(tmp_path, bench), on_error="skip")
    assert [i.task.uid for i in result.items] == ["0"]
    assert result.skipped == {"missing_column": 1, "bad_image": 1, "bad_answer": 1,
                              "duplicate_uid": 1}


def test_a_folder_problem_is_reported_and_skipped_while_the_others_run(tmp_path, capsys):
    root = write_root(tmp_path, "hub")
    for path in (root / "MathVision" / "data").glob("test-*"):
        path.unlink()  # only testmini is left: the paper's split `test` is missing
    (root / "MathVista" / "data" / "testmini-00000-of-00001-725687bf7a18d64b.parquet"
     ).write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="MathVision: no file of split 'test'"):
        check(root, select("all"))
    loaded = check(root, select("all"), on_error="skip")
    problems = {x.bench.name: x.found.problem for x in loaded if x.found.problem}
    assert set(problems) == {"mathvision", "mathvista"}
    assert "splits found: testmini" in problems["mathvision"]
    assert "not a readable parquet file" in problems["mathvista"]
    assert all(len(x.items) == len(EXPECTED[x.bench.name]) for x in loaded
               if x.bench.name not in problems)
    code, out = _check_output(capsys, "--data-root", str(root), "--on-error", "skip")
    assert code == 2 and out.count("PROBLEM:") == 2 and "items 4, skipped rows: none" in out


def test_corrupt_image_bytes_are_refused_when_decoded(tmp_path):
    """A header that reads passes the check; pixel data cut short is refused when decoded."""
    from bench_data import png

    cut = base64.b64encode(png(1)[:60]).decode()
    _tsv(tmp_path / "mmstar" / "mmstar.tsv", [_mmstar_row(0, image=cut)])
    item = load(find(tmp_path, BY_NAME["mmstar"])).items[0]
    with pytest.raises(ValueError, match="cannot be decoded"):
        item.task_with_images()


def test_missing_folders_limits_and_selection(tmp_path, root):
    assert find_folder(tmp_path, BY_NAME["wemath"]) is None
    assert find(tmp_path, BY_NAME["wemath"]).folder is None
    with pytest.raises(ValueError, match="not a directory"):
        find_folder(tmp_path / "nope", BY_NAME["wemath"])
    assert len(load(find(root, BY_NAME["dynamath"]), limit=3).items) == 3
    assert [b.name for b in select("mmstar,mathverse")] == ["mathverse", "mmstar"]
    assert [b.name for b in select("all")] == list(NAMES)
    with pytest.raises(ValueError, match="unknown benchmark"):
        select("mathverse,mmbench")
    with pytest.raises(ValueError, match="no benchmark folder under"):
        check(tmp_path, select("all"))


def test_large_images_are_resized_onto_the_patch_grid(tmp_path):
    from PIL import Image

    big = io.BytesIO()
    Image.new("RGB", (2000, 1500), (200, 30, 30)).save(big, format="PNG")
    _tsv(tmp_path / "mmstar" / "MMStar.tsv",
         [_mmstar_row(0, image=base64.b64encode(big.getvalue()).decode())])
    item = load(find(tmp_path, BY_NAME["mmstar"])).items[0]
    image = item.task_with_images(max_pixels=1280 * 28 * 28).images[0]
    assert image.width % 28 == 0 and image.height % 28 == 0
    assert image.width * image.height <= 1280 * 28 * 28
    assert abs(image.width / image.height - 4 / 3) < 0.05  # aspect kept as the grid allows
    assert item.task_with_images(max_pixels=None).images[0].size == (2000, 1500)


def test_data_that_is_no_image_is_refused_with_the_rows_before_an_engine(tmp_path):
    not_png = base64.b64encode(b"GIF? no: just text, long enough to be base64").decode()
    _tsv(tmp_path / "MMStar" / "MMStar.tsv", [_mmstar_row(0), _mmstar_row(1, image=not_png)])
    with pytest.raises(ValueError, match=r"MMStar\.tsv: row 2: image .* cannot be decoded"):
        load(find(tmp_path, BY_NAME["mmstar"]))
    result = load(find(tmp_path, BY_NAME["mmstar"]), on_error="skip")
    assert [i.task.uid for i in result.items] == ["0"]
    assert result.skipped == {"corrupt_image": 1}
