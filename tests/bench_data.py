"""Fixture benchmark folders in both layouts the eval reader accepts, a few rows per benchmark,
with real (small, generated) PNG images. Used by the reader and scoring tests and by the vLLM
end-to-end test.

`write_root(root, layouts)` writes one folder per benchmark; `layouts[name]` is "hf" (Hugging
Face export: parquet, or JSONL with image files for LogicVista) or "tsv" (VLMEvalKit: option
columns, base64 images). `EXPECTED` holds, per benchmark, what each row must read as
(question text, gold answer, options, breakdown group), the same in both layouts.
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np

NAMES = ("mathverse", "mathvision", "mathvista", "wemath", "dynamath", "logicvista",
         "mmmu_pro_v", "mmstar")


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


# Per benchmark: (hf rows, tsv rows). Row k of both lists is the same item.
MATHVERSE_MC = "As shown in the figure, find angle B.\nChoices:\nA:30°\nB:45°\nC:60°\nD:90°"


def _mathverse():
    spec = [("1", "Text Dominant", MATHVERSE_MC, "B", "multi-choice"),
            ("2", "Vision Only", "Find x.", "12", "free-form"),
            ("3", "Vision Intensive", "What fraction of the circle is shaded?", "\\frac{3}{4}",
             "free-form")]
    hf = [{"sample_index": i, "problem_index": i, "problem_version": v, "question": q,
           "image": _struct(10 + k), "answer": a, "question_type": t,
           "metadata": {"split": "testmini", "source": "x", "subject": "plane geometry",
                        "subfield": "angle"}, "query_cot": q, "question_for_eval": q}
          for k, (i, v, q, a, t) in enumerate(spec)]
    tsv = [{"index": 100 + k, "question": q, "answer": a, "image": _b64(10 + k),
            "problem_version": v, "question_type": t,
            "metadata": "{'subject': 'plane geometry', 'subfield': 'angle'}"}
           for k, (i, v, q, a, t) in enumerate(spec)]
    return hf, tsv


def _mathvision():
    spec = [("How many dots are there? <image1>", ["2", "4", "6", "8", "10"], "C", "counting"),
            ("What is the sum of the numbers?", [], "7", "arithmetic"),
            ("How long is the diagonal?", [], "2\\sqrt{2}", "metric geometry - length")]
    hf = [{"id": str(k + 1), "question": q, "options": o, "image": f"images/{k}.jpg",
           "decoded_image": _struct(20 + k), "answer": a, "solution": "", "level": 2,
           "subject": s} for k, (q, o, a, s) in enumerate(spec)]
    tsv = [{"index": k, "question": q, "answer": a, "image": _b64(20 + k),
            "choices": repr(o), "category": s} for k, (q, o, a, s) in enumerate(spec)]
    return hf, tsv


def _mathvista():
    spec = [("What fraction of the shape is blue?", ["3/11", "8/11", "6/11", "3/5"], "8/11",
             "multi_choice", "text", None, "figure question answering"),
            ("Which number is missing?", None, "14", "free_form", "integer", None,
             "math word problem"),
            ("How much money does Luca need? (Unit: $)", None, "1.45", "free_form", "float", 2.0,
             "math word problem"),
            ("Between which two years is the peak?", None, "[2007, 2008]", "free_form", "list",
             None, "figure question answering")]
    hf = [{"pid": str(k + 1), "question": q, "image": f"images/{k}.jpg",
           "decoded_image": _struct(30 + k), "choices": c, "unit": None, "precision": p,
           "answer": a, "question_type": qt, "answer_type": at,
           "metadata": {"task": task, "category": "x"}, "query": f"Hint: hint\nQuestion: {q}"}
          for k, (q, c, a, qt, at, p, task) in enumerate(spec)]
    tsv = []
    for k, (q, c, a, qt, at, p, task) in enumerate(spec):
        shown = q + ("\nChoices:\n" + "\n".join(f"({'ABCD'[i]}) {o}" for i, o in enumerate(c))
                     if c else "")
        tsv.append({"index": k, "question": f"Hint: Please answer.\nQuestion: {shown}",
                    "answer": a, "image": _b64(30 + k), "choices": repr(c) if c else "",
                    "question_type": qt, "answer_type": at,
                    "precision": "" if p is None else p, "task": task})
    return hf, tsv


def _wemath():
    spec = [("p1", "2steps_1", "What is the side length of the square?", ["2", "3", "4"], "B"),
            ("p1", "2steps_2", "What is the area of a square of side 3?", ["6", "9", "12"], "B"),
            ("p1", "2steps_multi", "What is the area of the square?", ["6", "9", "12"], "B"),
            ("p2", "1step", "How many sides does a triangle have?", ["3", "4"], "A")]
    hf = [{"ID": i, "split": "testmini", "knowledge concept": "area", "question": q,
           "option": "; ".join(f"{'ABCD'[n]}. {o}" for n, o in enumerate(opts)), "answer": a,
           "image_path": _struct(40 + k), "key": key, "question number": k}
          for k, (i, key, q, opts, a) in enumerate(spec)]
    tsv = [{"index": k, "ID": i, "question": q, **dict(zip("ABCD", opts)), "answer": a,
            "image": _b64(40 + k), "key": key} for k, (i, key, q, opts, a) in enumerate(spec)]
    return hf, tsv


DYNAMATH_MC = "Which point is highest?\nA: P\nB: Q\nC: R"


def _dynamath():
    spec = [("1", "1", "What is the value of f(1)?", "3.142", "float"),
            ("2", "1", DYNAMATH_MC, "B", "multiple choice"),
            ("1", "2", "What is the value of f(1)?", "2.718", "float"),
            ("2", "2", DYNAMATH_MC, "C", "multiple choice")]
    hf = [{"id": s, "question": q, "image": f"{s}.png", "decoded_image": _struct(50 + k),
           "ground_truth": a, "answer_type": t, "subject": "algebra",
           "knowledge_level": "high school", "_variant": v}
          for k, (s, v, q, a, t) in enumerate(spec)]
    tsv = [{"index": k, "qid": s, "varid": v, "question": q, "answer": a, "answer_type": t,
            "subject": "algebra", "knowledge_level": "high school", "image": _b64(50 + k)}
           for k, (s, v, q, a, t) in enumerate(spec)]
    return hf, tsv


def _logicvista():
    spec = [("Which shape comes next?\nA. circle\nB. square\nC. star\nD. ring", "B", "inductive"),
            ("Which two figures are rotations of the first?\nA. one\nB. two\nC. three\nD. four",
             "A, C", "spatial"),
            ("What number is missing?\nA. 3\nB. 5\nC. 7\nD. 9", "D", "numerical")]
    hf = [{"question_id": str(k), "question": q, "answer": a, "image": f"images/{k}.png",
           "skill": s} for k, (q, a, s) in enumerate(spec)]
    tsv = [{"index": k, "question": q, "answer": a, "image": _b64(60 + k), "skill": s}
           for k, (q, a, s) in enumerate(spec)]
    return hf, tsv


def _mmmu_pro_v():
    spec = [(["red", "green", "blue", "black"], "C", "Art"),
            (["1 m", "2 m", "3 m", "4 m", "5 m"], "A", "Physics")]
    hf = [{"id": f"test_{k}", "image": _struct(70 + k), "options": repr(o), "answer": a,
           "subject": s} for k, (o, a, s) in enumerate(spec)]
    tsv = [{"index": k, "question": "placeholder", **dict(zip("ABCDEFGHIJ", o)), "answer": a,
            "image": _b64(70 + k), "category": s} for k, (o, a, s) in enumerate(spec)]
    return hf, tsv


def _mmstar():
    spec = [("What colour is the top-left block?", ["red", "blue", "green", "yellow"], "A",
             "coarse perception"),
            ("How many blocks are there?", ["4", "9", "16", "25"], "C", "math")]
    hf = [{"index": k, "question": f"{q}\nOptions: " + ", ".join(
        f"{'ABCD'[n]}: {o}" for n, o in enumerate(opts)), "image": _struct(80 + k),
           "answer": a, "category": c, "l2_category": c, "meta_info": {"source": "x"}}
          for k, (q, opts, a, c) in enumerate(spec)]
    tsv = [{"index": k, "question": q, **dict(zip("ABCD", opts)), "answer": a, "category": c,
            "image": _b64(80 + k)} for k, (q, opts, a, c) in enumerate(spec)]
    return hf, tsv


ROWS = {"mathverse": _mathverse, "mathvision": _mathvision, "mathvista": _mathvista,
        "wemath": _wemath, "dynamath": _dynamath, "logicvista": _logicvista,
        "mmmu_pro_v": _mmmu_pro_v, "mmstar": _mmstar}

EXPECTED = {
    # per row: (question as shown, gold answer, options, group)
    "mathverse": [(MATHVERSE_MC, "B", ["30°", "45°", "60°", "90°"], "Text Dominant"),
                  ("Find x.", "12", None, "Vision Only"),
                  ("What fraction of the circle is shaded?", "\\frac{3}{4}", None,
                   "Vision Intensive")],
    "mathvision": [("How many dots are there?\nOptions:\nA. 2\nB. 4\nC. 6\nD. 8\nE. 10", "C",
                    ["2", "4", "6", "8", "10"], "counting"),
                   ("What is the sum of the numbers?", "7", None, "arithmetic"),
                   ("How long is the diagonal?", "2\\sqrt{2}", None, "metric geometry - length")],
    "mathvista": [(None, "B", ["3/11", "8/11", "6/11", "3/5"], "figure question answering"),
                  ("Which number is missing?", "14", None, "math word problem"),
                  ("How much money does Luca need? (Unit: $)", "1.45", None, "math word problem"),
                  ("Between which two years is the peak?", "[2007, 2008]", None,
                   "figure question answering")],
    "wemath": [("What is the side length of the square?\nOptions:\nA. 2\nB. 3\nC. 4", "B",
                ["2", "3", "4"], "2steps"),
               (None, "B", ["6", "9", "12"], "2steps"), (None, "B", ["6", "9", "12"], "2steps"),
               (None, "A", ["3", "4"], "1step")],
    "dynamath": [("What is the value of f(1)?", "3.142", None, "algebra"),
                 (DYNAMATH_MC, "B", ["P", "Q", "R"], "algebra"),
                 (None, "2.718", None, "algebra"), (None, "C", ["P", "Q", "R"], "algebra")],
    "logicvista": [(None, "B", ["circle", "square", "star", "ring"], "inductive"),
                   (None, "A, C", ["one", "two", "three", "four"], "spatial"),
                   (None, "D", ["3", "5", "7", "9"], "numerical")],
    "mmmu_pro_v": [(None, "C", ["red", "green", "blue", "black"], "Art"),
                   (None, "A", ["1 m", "2 m", "3 m", "4 m", "5 m"], "Physics")],
    "mmstar": [(None, "A", ["red", "blue", "green", "yellow"], "coarse perception"),
               (None, "C", ["4", "9", "16", "25"], "math")],
}


def _write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


def _write_tsv(path: Path, rows: list[dict]) -> None:
    import csv

    columns = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)


def _write_hf(name: str, folder: Path, rows: list[dict]) -> None:
    if name == "dynamath":  # one file per variant split, as the HF export names them
        for variant in ("1", "2"):
            part = [{k: v for k, v in r.items() if k != "_variant"} for r in rows
                    if r["_variant"] == variant]
            _write_parquet(folder / f"sample_variant{variant}-00000-of-00001.parquet", part)
    elif name == "logicvista":  # JSONL with image files beside it
        (folder / "images").mkdir()
        for k, r in enumerate(rows):
            (folder / r["image"]).write_bytes(png(60 + k))
        (folder / "logicvista.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        _write_parquet(folder / f"{name}-testmini.parquet", rows)


def write_root(root: Path, layouts: dict[str, str] | str = "hf") -> Path:
    """One folder per benchmark under `root`, each in `layouts[name]` ("hf" or "tsv")."""
    for name in NAMES:
        layout = layouts if isinstance(layouts, str) else layouts[name]
        folder = root / name
        folder.mkdir(parents=True)
        hf, tsv = ROWS[name]()
        if layout == "hf":
            _write_hf(name, folder, hf)
        else:
            _write_tsv(folder / f"{name}.tsv", tsv)
    return root


MIXED = {name: ("tsv" if i % 2 else "hf") for i, name in enumerate(NAMES)}
"""Half the benchmarks in each layout, for the end-to-end run."""
