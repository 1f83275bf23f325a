"""Fixture benchmarks in each layout their publishers ship, a few made-up rows each, with drawn
PNG images. Used by the reader, check and scoring tests and by the vLLM end-to-end runs.

`write_root(root, layout)` writes every benchmark under `root`:
- "hub": each benchmark as its repo is downloaded, under the repo's folder name: hub subfolders
  (`data/testmini-00000-of-00001-*.parquet`), README `configs:` blocks, a split and its subset
  side by side (MathVision `test` and `testmini`), one split in two copies (MathVerse parquet and
  JSON, MMStar parquet and TSV), stray non-data JSON (MathVista `source.json`, WeMath's
  knowledge nodes, MMMU-Pro's standard config), MathVerse Vision Only rows, and the GitHub
  layout where that is how the benchmark ships (LogicVista `data/dataset.json` keyed by id with
  `imagename`; WeMath `data/testmini.json`);
- "tsv": VLMEvalKit's flat folder, `LMUData/<Name>.tsv` side by side, base64 images.
`layout` may also map names to layouts (`MIXED`). `EXPECTED` holds what each row of the paper's
split must read as in every layout (question shown, gold, options, breakdown group);
`ROWS_BY_FILE` the rows `--check` must count.
"""
from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import numpy as np

NAMES = ("mathverse", "mathvision", "mathvista", "wemath", "dynamath", "logicvista",
         "mmmu_pro_v", "mmstar")
HUB_FOLDERS = {"mathverse": "MathVerse", "mathvision": "MathVision", "mathvista": "MathVista",
               "wemath": "We-Math", "dynamath": "DynaMath_Sample", "logicvista": "LogicVista",
               "mmmu_pro_v": "MMMU_Pro", "mmstar": "MMStar"}
"""The publishers' repo names (hub dataset or GitHub), as a download leaves them."""
TSV_NAMES = {"mathverse": "MathVerse_MINI", "mathvision": "MathVision",
             "mathvista": "MathVista_MINI", "wemath": "WeMath", "dynamath": "DynaMath",
             "logicvista": "LogicVista", "mmmu_pro_v": "MMMU_Pro_V", "mmstar": "MMStar"}


def png(seed: int, size: int = 56) -> bytes:
    """A size x size RGB PNG of coloured blocks (56 px: 4 image tokens for Qwen2.5-VL)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (size // 14, size // 14, 3), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((14, 14, 1), dtype=np.uint8))
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _b64(seed: int) -> str:
    return base64.b64encode(png(seed)).decode()


def _struct(seed: int) -> dict:
    return {"bytes": png(seed), "path": f"{seed}.png"}


# ---------------------------------------------------------------------------------- rows

MATHVERSE_MC = "As shown in the figure, find angle B.\nChoices:\nA:30°\nB:45°\nC:60°\nD:90°"
VISION_ONLY_MC = ("According to the question shown in the image, please directly answer the "
                  "question and provide the correct option letter, e.g., A, B, C, D.")
VISION_ONLY_FREE = ("According to the question shown in the image, please directly answer the "
                    "question and provide the final value, e.g., 1, 2.5, 300.")
DIRECT = "Please directly answer the question and provide the final value, e.g., 1, 2.5, 300."


def _mathverse():
    # (sample_index, version, question, query_wo, question_for_eval, answer, type)
    spec = [("1", "Text Dominant", MATHVERSE_MC, "", MATHVERSE_MC, "B", "multi-choice"),
            ("2", "Vision Only", "", VISION_ONLY_MC, MATHVERSE_MC, "C", "multi-choice"),
            ("3", "Vision Intensive", "What fraction of the circle is shaded?", "",
             "What fraction of the circle is shaded?", "\\frac{3}{4}", "free-form"),
            ("4", "Vision Only", "", VISION_ONLY_FREE, "Find x.", "12", "free-form")]
    hub = []
    for k, (i, v, q, wo, ev, a, t) in enumerate(spec):
        wo = wo or f"{DIRECT}\nQuestion: {q}"
        hub.append({"sample_index": i, "problem_index": i, "problem_version": v, "question": q,
                    "image": _struct(10 + k), "answer": a, "question_type": t,
                    "metadata": {"split": "testmini", "subject": "plane geometry"},
                    "query_wo": wo, "query_cot": wo, "question_for_eval": ev})
    tsv = [{"index": 100 + k, "question": r["query_wo"], "answer": r["answer"],
            "image": _b64(10 + k), "problem_version": r["problem_version"],
            "question_type": r["question_type"], "question_for_eval": r["question_for_eval"],
            "metadata": "{'subject': 'plane geometry'}"} for k, r in enumerate(hub)]
    return hub, tsv


def _mathvision():
    spec = [("How many dots are there? <image1>", ["2", "4", "6", "8", "10"], "C", "counting"),
            ("What is the sum of the numbers?", [], "7", "arithmetic"),
            ("How long is the diagonal?", [], "2\\sqrt{2}", "metric geometry - length")]
    hub = [{"id": str(k + 1), "question": q, "options": o, "image": f"images/{k + 1}.jpg",
            "decoded_image": _struct(20 + k), "answer": a, "solution": "", "level": 2,
            "subject": s} for k, (q, o, a, s) in enumerate(spec)]
    tsv = [{"index": k, "question": q, "answer": a, "image": _b64(20 + k),
            "choices": repr(o), "category": s} for k, (q, o, a, s) in enumerate(spec)]
    return hub, tsv


def _vista_query(q, unit, choices, hint):
    text = f"Hint: {hint}\nQuestion: {q}" + (f" (Unit: {unit})" if unit else "")
    if choices:
        text += "\nChoices:\n" + "\n".join(f"({'ABCD'[i]}) {c}" for i, c in enumerate(choices))
    return text


MC_HINT = ("Please answer the question and provide the correct option letter, e.g., A, B, C, "
           "D, at the end.")
INT_HINT = ("Please answer the question requiring an integer answer and provide the final "
            "value, e.g., 1, 2, 3, at the end.")
FLOAT_HINT = ("Please answer the question requiring a floating-point number with two decimal "
              "places and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.")
LIST_HINT = ("Please answer the question requiring a Python list as an answer and provide the "
             "final list, e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.")
VISTA = [  # question, choices, answer, question_type, answer_type, precision, unit, task, hint
    ("What fraction of the shape is blue?", ["3/11", "8/11", "6/11", "3/5"], "8/11",
     "multi_choice", "text", None, None, "figure question answering", MC_HINT),
    ("Which number is missing?", None, "14", "free_form", "integer", None, None,
     "math word problem", INT_HINT),
    ("How much money does Luca need to buy a sour apple candy and a butterscotch candy?", None,
     "1.45", "free_form", "float", 2.0, "$", "math word problem", FLOAT_HINT),
    ("Between which two years is the peak?", None, "[2007, 2008]", "free_form", "list", None,
     None, "figure question answering", LIST_HINT),
]


def _mathvista():
    hub, tsv = [], []
    for k, (q, c, a, qt, at, p, u, task, hint) in enumerate(VISTA):
        query = _vista_query(q, u, c, hint)
        hub.append({"pid": str(k + 1), "question": q, "image": f"images/{k + 1}.jpg",
                    "decoded_image": _struct(30 + k), "choices": c, "unit": u, "precision": p,
                    "answer": a, "question_type": qt, "answer_type": at,
                    "metadata": {"task": task, "category": "x"}, "query": query})
        tsv.append({"index": k + 1, "question": query, "answer": a, "image": _b64(30 + k),
                    "choices": repr(c) if c else "", "question_type": qt, "answer_type": at,
                    "precision": "" if p is None else p, "unit": u or "", "task": task})
    return hub, tsv


WEMATH = [("2steps_1", "2steps_1", "What is the side length of the square?", ["2", "3", "4"], "B"),
          ("2steps_1", "2steps_2", "What is the area of a square of side 3?", ["6", "9", "12"],
           "B"),
          ("2steps_1", "2steps_multi", "What is the area of the square?", ["6", "9", "12"], "B"),
          ("2steps_2", "2steps_1", "How many sides does a triangle have?", ["3", "4"], "A")]


def _wemath():
    hub = [{"ID": i, "split": "testmini", "knowledge concept": "area", "question": q,
            "option": ";".join(f"{'ABCD'[n]}. {o}" for n, o in enumerate(opts)), "answer": a,
            "image_path": f"2steps/image/{k + 1}-1.png", "key": key, "question number": k + 1}
           for k, (i, key, q, opts, a) in enumerate(WEMATH)]
    tsv = [{"index": k, "ID": i, "question": q, **dict(zip("ABCD", opts)), "answer": a,
            "image": _b64(40 + k), "key": key} for k, (i, key, q, opts, a) in enumerate(WEMATH)]
    return hub, tsv


DYNAMATH_MC = "Which point is highest?\nA: P\nB: Q\nC: R"
DYNAMATH = [("1", "1", "What is the value of f(1)?", "3.142", "float"),
            ("2", "1", DYNAMATH_MC, "B", "multiple choice"),
            ("1", "2", "What is the value of f(1)?", "2.718", "float"),
            ("2", "2", DYNAMATH_MC, "C", "multiple choice")]


def _dynamath():
    hub = [{"id": s, "question": q, "image": f"{s}.png", "decoded_image": _struct(50 + k),
            "ground_truth": a, "answer_type": t, "subject": "algebra",
            "knowledge_level": "high school", "_variant": v}
           for k, (s, v, q, a, t) in enumerate(DYNAMATH)]
    tsv = [{"index": k, "qid": s, "varid": v, "question": q, "answer": a, "answer_type": t,
            "subject": "algebra", "knowledge_level": "high school", "image": _b64(50 + k)}
           for k, (s, v, q, a, t) in enumerate(DYNAMATH)]
    return hub, tsv


LOGICVISTA = [("v1_0", "Which shape comes next? Select from A-D", "B", ["inductive"]),
              ("v1_1", "Which two figures are rotations of the first? Select from A-D", "A, C",
               ["spatial", "inductive"]),
              ("v1_2", "What number is missing?\nA) 3 B) 5 C) 7 D) 9", "D", ["numerical"]),
              ("v1_3", "Which statement follows? Select from 1-5", "3", ["deductive"])]


def _logicvista():
    hub = {key: {"imagename": f"{key}.png", "question": q, "answer": a, "reasoning": "because",
                 "skill": s, "capability": ["diagram"]} for key, q, a, s in LOGICVISTA}
    tsv = [{"index": k, "question": q, "answer": a, "image": _b64(60 + k), "skill": ", ".join(s)}
           for k, (_, q, a, s) in enumerate(LOGICVISTA)]
    return hub, tsv


def _mmmu_pro_v():
    spec = [(["red", "green", "blue", "black"], "C", "Art"),
            (["1 m", "2 m", "3 m", "4 m", "5 m"], "A", "Physics")]
    hub = [{"id": f"test_{s}_{k}", "image": _struct(70 + k), "options": repr(o), "answer": a,
            "subject": s} for k, (o, a, s) in enumerate(spec)]
    tsv = [{"index": k, "question": "placeholder", **dict(zip("ABCDEFGHIJ", o)), "answer": a,
            "image": _b64(70 + k), "category": s} for k, (o, a, s) in enumerate(spec)]
    return hub, tsv


def _mmstar():
    spec = [("What colour is the top-left block?", ["red", "blue", "green", "yellow"], "A",
             "coarse perception", "image scene and topic"),
            ("How many blocks are there?", ["4", "9", "16", "25"], "C", "math", "numeric")]
    hub = [{"index": k, "question": f"{q}\nOptions: " + ", ".join(
        f"{'ABCD'[n]}: {o}" for n, o in enumerate(opts)), "image": _struct(80 + k),
            "answer": a, "category": c, "l2_category": l2, "meta_info": {"source": "x"}}
           for k, (q, opts, a, c, l2) in enumerate(spec)]
    tsv = [{"index": k, "question": q, **dict(zip("ABCD", opts)), "answer": a, "category": c,
            "l2_category": l2, "image": _b64(80 + k)}
           for k, (q, opts, a, c, l2) in enumerate(spec)]
    return hub, tsv


ROWS = {"mathverse": _mathverse, "mathvision": _mathvision, "mathvista": _mathvista,
        "wemath": _wemath, "dynamath": _dynamath, "logicvista": _logicvista,
        "mmmu_pro_v": _mmmu_pro_v, "mmstar": _mmstar}


def _vista_shown(k: int) -> str:
    q, c, _, _, _, _, u, _, hint = VISTA[k]
    return _vista_query(q, u, c, hint)


EXPECTED = {
    # per row: (question as shown, gold answer, options, group)
    "mathverse": [(MATHVERSE_MC, "B", ["30°", "45°", "60°", "90°"], "Text Dominant"),
                  (VISION_ONLY_MC, "C", ["30°", "45°", "60°", "90°"], "Vision Only"),
                  ("What fraction of the circle is shaded?", "\\frac{3}{4}", None,
                   "Vision Intensive"),
                  (VISION_ONLY_FREE, "12", None, "Vision Only")],
    "mathvision": [("How many dots are there?\nOptions:\nA. 2\nB. 4\nC. 6\nD. 8\nE. 10", "C",
                    ["2", "4", "6", "8", "10"], "counting"),
                   ("What is the sum of the numbers?", "7", None, "arithmetic"),
                   ("How long is the diagonal?", "2\\sqrt{2}", None, "metric geometry - length")],
    "mathvista": [(_vista_shown(0), "B", ["3/11", "8/11", "6/11", "3/5"],
                   "figure question answering"),
                  (_vista_shown(1), "14", None, "math word problem"),
                  (_vista_shown(2), "1.45", None, "math word problem"),
                  (_vista_shown(3), "[2007, 2008]", None, "figure question answering")],
    "wemath": [("What is the side length of the square?\nOptions:\nA. 2\nB. 3\nC. 4", "B",
                ["2", "3", "4"], "2steps"),
               (None, "B", ["6", "9", "12"], "2steps"), (None, "B", ["6", "9", "12"], "2steps"),
               (None, "A", ["3", "4"], "2steps")],
    "dynamath": [("What is the value of f(1)?", "3.142", None, "algebra"),
                 (DYNAMATH_MC, "B", ["P", "Q", "R"], "algebra"),
                 (None, "2.718", None, "algebra"), (None, "C", ["P", "Q", "R"], "algebra")],
    "logicvista": [("Which shape comes next? Select from A-D", "B", None, ["inductive"]),
                   (None, "A, C", None, ["spatial", "inductive"]),
                   (None, "D", ["3", "5", "7", "9"], ["numerical"]),
                   (None, "3", None, ["deductive"])],
    "mmmu_pro_v": [(None, "C", ["red", "green", "blue", "black"], "Art"),
                   (None, "A", ["1 m", "2 m", "3 m", "4 m", "5 m"], "Physics")],
    "mmstar": [(None, "A", ["red", "blue", "green", "yellow"], "coarse perception"),
               (None, "C", ["4", "9", "16", "25"], "math")],
}
MATHVISION_TESTMINI = 2
"""MathVision's testmini fixture: the first rows of test (a subset, as published)."""


# ---------------------------------------------------------------------------------- writers


def _parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _tsv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)


def _json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def _readme(folder: Path, configs: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(f"---\nlicense: mit\nconfigs:\n{configs}---\n# Dataset\n")


def _no_bytes(rows: list[dict], key: str) -> list[dict]:
    """Rows as the repo's JSON copy has them: the image as a relative path, no bytes."""
    return [{k: v for k, v in r.items() if k != key} for r in rows]


def _hub_mathverse(folder: Path, hub: list[dict]) -> None:
    _parquet(folder / "testmini.parquet", hub)
    for k, r in enumerate(hub):  # the JSON copy names its image file (images.zip unpacked)
        (folder / "images" / f"image_{k}.png").parent.mkdir(parents=True, exist_ok=True)
        (folder / "images" / f"image_{k}.png").write_bytes(png(10 + k))
    _json(folder / "testmini.json", [{**r, "image": f"image_{k}.png"} for k, r in enumerate(hub)])
    _parquet(folder / "testmini_text_only.parquet",
             [{**_no_bytes([hub[0]], "image")[0], "image": ""}])
    _readme(folder, "- config_name: testmini\n  data_files:\n  - split: testmini\n"
            "    path: testmini.parquet\n- config_name: testmini_text_only\n  data_files:\n"
            "  - split: testmini_text_only\n    path: testmini_text_only.parquet\n")


def _hub_mathvision(folder: Path, hub: list[dict]) -> None:
    _parquet(folder / "data" / "test-00000-of-00001-3532b8d3f1b4047a.parquet", hub)
    _parquet(folder / "data" / "testmini-00000-of-00001-f8ff70fcb2f29b1d.parquet",
             hub[:MATHVISION_TESTMINI])
    _readme(folder, "- config_name: default\n  data_files:\n  - split: test\n"
            "    path: data/test-*\n  - split: testmini\n    path: data/testmini-*\n")


def _hub_mathvista(folder: Path, hub: list[dict]) -> None:
    _parquet(folder / "data" / "testmini-00000-of-00001-725687bf7a18d64b.parquet", hub)
    _json(folder / "source.json", {"IQTest": {"url": "x"}})  # not data
    _readme(folder, "- config_name: default\n  data_files:\n  - split: testmini\n"
            "    path: data/testmini-*\n")


def _github_wemath(folder: Path, hub: list[dict]) -> None:
    for k, r in enumerate(hub):
        path = folder / "data" / r["image_path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png(40 + k))
    _json(folder / "data" / "testmini.json", hub)
    _json(folder / "data" / "knowledge_structure_nodes.json", [{"root0": "Geometry"}])
    _json(folder / "data" / "json" / "Two-steps.json", [{"ID": "x"}])


def _hub_dynamath(folder: Path, hub: list[dict]) -> None:
    for variant in ("1", "2"):
        part = [{k: v for k, v in r.items() if k != "_variant"} for r in hub
                if r["_variant"] == variant]
        _parquet(folder / "data" / f"sample_variant{variant}-00000-of-00001.parquet", part)
    _readme(folder, "- config_name: default\n  data_files:\n  - split: sample_variant1\n"
            "    path: data/sample_variant1-*\n  - split: sample_variant2\n"
            "    path: data/sample_variant2-*\n")


def _github_logicvista(folder: Path, rows: dict) -> None:
    for k, key in enumerate(rows):
        path = folder / "data" / "images" / f"{key}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png(60 + k))
    _json(folder / "data" / "dataset.json", rows)


def _hub_mmmu_pro_v(folder: Path, hub: list[dict]) -> None:
    _parquet(folder / "vision" / "test-00000-of-00001.parquet", hub)
    _parquet(folder / "standard (10 options)" / "test-00000-of-00001.parquet",
             [{"id": "s", "question": "q", "answer": "A"}])
    _readme(folder, "- config_name: standard (10 options)\n  data_files:\n  - split: test\n"
            "    path: standard (10 options)/test-*\n- config_name: vision\n  data_files:\n"
            "  - split: test\n    path: vision/test-*\n")


def _hub_mmstar(folder: Path, hub: list[dict], tsv: list[dict]) -> None:
    _parquet(folder / "mmstar.parquet", hub)
    _tsv(folder / "MMStar.tsv", tsv)  # the same split again, as the repo ships it
    _readme(folder, "- config_name: val\n  data_files:\n  - split: val\n    path: mmstar.parquet\n")


def write_hub(name: str, folder: Path) -> Path:
    """One benchmark as its publisher's repo is downloaded."""
    hub, tsv = ROWS[name]()
    writers = {"mathverse": _hub_mathverse, "mathvision": _hub_mathvision,
               "mathvista": _hub_mathvista, "wemath": _github_wemath,
               "dynamath": _hub_dynamath, "logicvista": _github_logicvista,
               "mmmu_pro_v": _hub_mmmu_pro_v}
    if name == "mmstar":
        _hub_mmstar(folder, hub, tsv)
    else:
        writers[name](folder, hub)
    return folder


def write_root(root: Path, layout: dict[str, str] | str = "hub") -> Path:
    """Every benchmark under `root`: "hub" folders (repo names), or VLMEvalKit "tsv" files in
    the flat `root/LMUData` folder."""
    for name in NAMES:
        kind = layout if isinstance(layout, str) else layout[name]
        if kind == "hub":
            write_hub(name, root / HUB_FOLDERS[name])
        else:
            _tsv(root / "LMUData" / f"{TSV_NAMES[name]}.tsv", ROWS[name]()[1])
    return root


MIXED = {name: ("tsv" if i % 2 else "hub") for i, name in enumerate(NAMES)}
"""Half the benchmarks in each layout, for the end-to-end runs."""

CHECK_ROWS = {  # benchmark -> (files read, rows counted) of the paper's split, "hub" layout
    "mathverse": ({"testmini.parquet": 4}, 4), "mathvision": ({"test-": 3}, 3),
    "mathvista": ({"testmini-": 4}, 4), "wemath": ({"data/testmini.json": 4}, 4),
    "dynamath": ({"sample_variant1-": 2, "sample_variant2-": 2}, 4),
    "logicvista": ({"data/dataset.json": 4}, 4), "mmmu_pro_v": ({"vision/test-": 2}, 2),
    "mmstar": ({"mmstar.parquet": 2}, 2),
}
