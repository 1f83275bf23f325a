"""Row readers: one small function per benchmark and layout, each naming the official fields once.

A reader turns one raw `Row` of a published file into a `BenchItem`: a `Task` whose question is
the text the model is shown (options included; answer-format hints left out, since the role
templates ask for `\\boxed{}`, except MathVista's official query, whose hint carries the unit and
precision), whose gold answer is the option letter for multiple choice, and whose `meta` carries
what scoring needs (`kind`, `options`, breakdown `group`, answer type and precision, WeMath step
keys, DynaMath seed and variant, MMStar's `l2`). Layouts (see `registry.BENCHMARKS`):

- hub: the Hugging Face dataset repo as downloaded (parquet, or its JSON copy);
- github: the authors' repository layout (LogicVista `data/dataset.json` keyed by id with
  `imagename`, WeMath `data/testmini.json`, MATH-V `data/test.jsonl`, MathVista `testmini.json`);
- tsv: VLMEvalKit's TSV (`index`, option columns `A`, `B`, ..., a base64 `image`).

The two layouts of one benchmark read the same rows as the same items (tests/bench_data.py).
"""
from __future__ import annotations

import re
from typing import Any

from prco_mega.data.reader import RowError
from prco_mega.eval.benchmarks.rows import KEY_FIELD, LETTERS, BenchItem, Row
from prco_mega.types import Task

_IMAGE_TAG = re.compile(r"<\s*image\s*\d*\s*>", re.IGNORECASE)
_HINT_LINE = re.compile(r"^\s*Hint\s*:.*?(?:\n|$)", re.IGNORECASE)
_UP_TO_QUESTION = re.compile(r"^(?:[^\n]*\n){0,2}?\s*Question\s*:\s*", re.IGNORECASE)
_OPTION_LABEL = re.compile(r"(?<![A-Za-z0-9])\(?([A-J])(?:\)|:|\.|：)\s*")
_WEMATH_OPTION = re.compile(r"(?:^|;)\s*([A-H])\s*[.:：]\s*")
_DYNAMATH_VARIANT = re.compile(r"variant_?(\d+)", re.IGNORECASE)
MMMU_PRO_V_PROMPT = "Answer the multiple-choice question shown in the image."
"""MMMU-Pro's vision setting shows the question and its options only inside the image."""
HUB_IMAGE = ("decoded_image", "image", "images", "image_path")
"""Image columns of the hub exports, the decoded one first (MathVista and MATH-V also keep the
image's relative path in `image`)."""
TSV_IMAGE = ("image", "image_path")


# ---------------------------------------------------------------------------------- text helpers


def format_options(options: list[str]) -> str:
    return "Options:\n" + "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def question_stem(text: str) -> str:
    """`text` without image tags and without the lines before a `Question:` label (an
    instruction such as MathVerse's `Please directly answer ...` or a `Hint: ...`)."""
    text = _IMAGE_TAG.sub("", text).strip()
    text = _HINT_LINE.sub("", text, count=1)
    return _UP_TO_QUESTION.sub("", text, count=1).strip()


def options_in_text(text: str) -> list[str] | None:
    """Option texts of labels `A:`/`A.`/`(A)` ... found in order in a question, or None.

    Benchmarks that embed their options in the question (MathVerse, MMStar, DynaMath,
    LogicVista) are scored by letter; these texts also let an answer that repeats an option's
    text count.
    """
    labels = list(_OPTION_LABEL.finditer(text))
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
          images: tuple[str, ...], options: list[str] | None = None) -> BenchItem:
    if not question:
        raise RowError("missing_question", "the row has no question text")
    task = Task(uid=uid, question=question, answer=answer, family="",
                meta={"options": options, "file": str(row.file), "row": row.number, **meta})
    return BenchItem(task, row.images(*images), row.file, row.number)


def _choice(row: Row, uid: str, question: str, options: list[str] | None, answer: str,
            meta: dict[str, Any], images: tuple[str, ...], shown: bool = False) -> BenchItem:
    """A multiple-choice item; `shown`: the options are already in `question`, or in the
    image only (MathVerse's vision versions, MMMU-Pro: then the gold is read as a letter)."""
    if not options and not shown:
        raise RowError("missing_options", "multiple-choice row without options")
    text = question if shown else f"{question}\n{format_options(options or [])}"
    return _item(row, uid, text, gold_letter(answer, options), {"kind": "choice", **meta},
                 images, options)


# ---------------------------------------------------------------------------------- MathVerse


def _mathverse(row: Row, uid: str, images: tuple[str, ...]) -> BenchItem:
    """Vision Only rows have an empty `question` (the text is in the image): the model is shown
    the version's own eval prompt (`query_wo`, VLMEvalKit's `question`), and the full question
    (`question_for_eval`) only lends its option texts to scoring."""
    question = question_stem(str(row.get("question") or ""))
    shown = question or str(row.get("query_wo", "question") or "").strip()
    meta = {"group": str(row.get("problem_version") or "unknown"),
            "subject": row.mapping("metadata").get("subject")}
    if "choice" in str(row.get("question_type") or "").lower():
        options = options_in_text(str(row.get("question_for_eval") or question))
        return _choice(row, uid, shown, options, row.text("answer"), meta, images, shown=True)
    return _item(row, uid, shown, row.text("answer"), {"kind": "free", **meta}, images)


def mathverse_hub(row: Row) -> BenchItem:
    return _mathverse(row, row.uid("sample_index"), HUB_IMAGE)


def mathverse_tsv(row: Row) -> BenchItem:
    return _mathverse(row, row.uid("index"), TSV_IMAGE)


# ---------------------------------------------------------------------------------- MathVision


def _mathvision(row: Row, uid: str, options: list[str] | None, group: Any,
                images: tuple[str, ...]) -> BenchItem:
    question = question_stem(row.text("question"))
    meta = {"group": str(group or "unknown"), "level": row.get("level")}
    if options:
        return _choice(row, uid, question, options, row.text("answer"), meta, images)
    return _item(row, uid, question, row.text("answer"), {"kind": "free", **meta}, images)


def mathvision_hub(row: Row) -> BenchItem:
    """MathLLMs/MathVision parquet and MATH-V's `data/test.jsonl`: `options` list, `subject`."""
    return _mathvision(row, row.uid("id"), row.listed("options"), row.get("subject"), HUB_IMAGE)


def mathvision_tsv(row: Row) -> BenchItem:
    options = row.listed("choices") or row.options_from_columns()
    return _mathvision(row, row.uid("index"), options, row.get("category", "subject"), TSV_IMAGE)


# ---------------------------------------------------------------------------------- MathVista

_PLACES = {1: "one decimal place", 2: "two decimal places", 3: "three decimal places"}


def mathvista_query(question: str, unit: Any, choices: list[str] | None, answer_type: str,
                    precision: Any) -> str:
    """MathVista's test query built from the fields as its `build_query.py` orders them (the
    question with `(Unit: u)`, the choices as `(A) x`, a hint saying the answer's type and
    precision), for rows without the official `query` text."""
    text = f"Question: {question}" + (f" (Unit: {unit})" if unit else "")
    if choices:
        text += "\nChoices:\n" + "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
        return f"{text}\nHint: Answer with the correct option letter."
    kind = {"integer": "an integer", "list": "a Python list"}.get(answer_type, "")
    if answer_type == "float":
        places = int(float(precision or 0))
        kind = f"a floating-point number with {_PLACES.get(places, f'{places} decimal places')}"
    return f"{text}\nHint: The answer is {kind or 'a short text'}."


def _mathvista(row: Row, uid: str, query: str, choices: list[str] | None, task: Any,
               images: tuple[str, ...]) -> BenchItem:
    """The model is shown the official query (question, unit, choices and the hint that carries
    the answer's type and precision); the gold of a multiple-choice row becomes its letter."""
    answer_type = str(row.get("answer_type") or "text")
    question = row.text("question")
    shown = _IMAGE_TAG.sub("", query or mathvista_query(
        question, row.get("unit"), choices, answer_type, row.get("precision"))).strip()
    meta = {"group": str(task or "unknown"), "answer_type": answer_type,
            "precision": row.get("precision"), "unit": row.get("unit"),
            "question_type": str(row.get("question_type") or "free_form")}
    if meta["question_type"] == "multi_choice" or choices:
        options = choices or options_in_text(question_stem(question))
        return _choice(row, uid, shown, options, row.text("answer"), meta, images, shown=True)
    return _item(row, uid, shown, row.text("answer"), {"kind": "free", **meta}, images)


def mathvista_hub(row: Row) -> BenchItem:
    """AI4Math/MathVista parquet and `testmini.json` / `annot_testmini.json` (keyed by pid)."""
    return _mathvista(row, row.uid("pid", KEY_FIELD), str(row.get("query") or ""),
                      row.listed("choices"), row.mapping("metadata").get("task"), HUB_IMAGE)


def mathvista_tsv(row: Row) -> BenchItem:
    """VLMEvalKit's `question` is the official query itself (hint, question, choices)."""
    return _mathvista(row, row.uid("index"), row.text("question"), row.listed("choices"),
                      row.get("task"), TSV_IMAGE)


# ---------------------------------------------------------------------------------- WeMath


def wemath_options(text: str) -> list[str] | None:
    """WeMath's one `option` string `A. x;B. y; E. No correct answer` as a list."""
    marks = list(_WEMATH_OPTION.finditer(text))
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return [text[m.end():end].strip() for m, end in zip(marks, ends)] or None


def _wemath(row: Row, uid: str, options: list[str] | None, images: tuple[str, ...]) -> BenchItem:
    """`ID` names a problem (`2steps_12`), `key` the row's place in it (`2steps_1`, ...,
    `2steps_multi`): the four-dimensional metrics join a problem's rows by `ID`."""
    problem, key = row.text("ID"), row.text("key")
    meta = {"group": key.split("_")[0], "wemath_id": problem, "wemath_key": key}
    return _choice(row, uid, question_stem(row.text("question")), options, row.text("answer"),
                   meta, images)


def wemath_hub(row: Row) -> BenchItem:
    """We-Math/We-Math parquet and the GitHub `data/testmini.json` (`image_path` relative)."""
    options = wemath_options(str(row.get("option") or ""))
    return _wemath(row, f"{row.text('ID')}@{row.text('key')}", options, HUB_IMAGE)


def wemath_tsv(row: Row) -> BenchItem:
    return _wemath(row, row.uid("index"), row.options_from_columns(), TSV_IMAGE)


# ---------------------------------------------------------------------------------- DynaMath


def _dynamath(row: Row, uid: str, seed: str, variant: str, answer: str,
              images: tuple[str, ...]) -> BenchItem:
    """Seed question and variant: the worst case is taken over each seed's variants."""
    answer_type = str(row.get("answer_type") or "text")
    question = question_stem(row.text("question"))
    meta = {"group": str(row.get("subject") or "unknown"), "seed": seed, "variant": variant,
            "answer_type": answer_type, "level": row.get("knowledge_level")}
    if answer_type == "multiple choice":
        return _choice(row, uid, question, options_in_text(question), answer, meta, images,
                       shown=True)
    return _item(row, uid, question, answer, {"kind": "free", **meta}, images)


def dynamath_hub(row: Row) -> BenchItem:
    """DynaMath/DynaMath_Sample: one split per variant (`sample_variantN`, the file name)."""
    found = _DYNAMATH_VARIANT.search(row.file.name)
    variant = found[1] if found else "1"
    seed = row.text("id")
    return _dynamath(row, f"{seed}-v{variant}", seed, variant, row.text("ground_truth"),
                     HUB_IMAGE)


def dynamath_tsv(row: Row) -> BenchItem:
    return _dynamath(row, row.uid("index"), row.text("qid"), row.text("varid"),
                     row.text("answer"), TSV_IMAGE)


# ---------------------------------------------------------------------------------- LogicVista


def logicvista_gold(answer: str) -> str:
    """The gold as the official split reads it (`"A, C"` -> `A, C`; a digit answer of a
    `Select from 1-5` question stays a digit)."""
    parts = sorted({p.strip().upper() for p in answer.split(",") if p.strip()})
    if not parts:
        raise RowError("bad_answer", f"answer {answer!r} names no option")
    return ", ".join(parts)


def _logicvista(row: Row, uid: str, skills: list[str] | None,
                images: tuple[str, ...]) -> BenchItem:
    """The options are in the question or the image; the answer may name several; a row counts
    in the breakdown of each of its skills."""
    question = question_stem(row.text("question"))
    columns = row.options_from_columns()
    text = f"{question}\n{format_options(columns)}" if columns else question
    meta = {"kind": "letters", "group": skills or ["unknown"]}
    return _item(row, uid, text, logicvista_gold(row.text("answer")), meta, images,
                 columns or options_in_text(question))


def logicvista_github(row: Row) -> BenchItem:
    """Yijia-Xiao/LogicVista `data/dataset.json`: keyed by id (`v1_0`), `imagename` in
    `data/images/`, `skill` a list."""
    return _logicvista(row, row.uid(KEY_FIELD), row.listed("skill"), ("imagename",))


def logicvista_tsv(row: Row) -> BenchItem:
    """VLMEvalKit's TSV writes `skill` as one text (`inductive`, `"['a', 'b']"`)."""
    skills = [s for part in row.listed("skill") or [] for s in re.split(r"\s*,\s*", part) if s]
    return _logicvista(row, row.uid("index"), skills, TSV_IMAGE)


# ---------------------------------------------------------------------------------- MMMU-Pro


def _mmmu_pro_v(row: Row, uid: str, options: list[str] | None, group: Any,
                images: tuple[str, ...]) -> BenchItem:
    return _choice(row, uid, MMMU_PRO_V_PROMPT, options, row.text("answer"),
                   {"group": str(group or "unknown")}, images, shown=True)


def mmmu_pro_v_hub(row: Row) -> BenchItem:
    """MMMU/MMMU_Pro `vision/test-*.parquet`: `options` (a list's text), `subject`."""
    return _mmmu_pro_v(row, row.uid("id"), row.listed("options"), row.get("subject"), HUB_IMAGE)


def mmmu_pro_v_tsv(row: Row) -> BenchItem:
    return _mmmu_pro_v(row, row.uid("index"), row.options_from_columns(),
                       row.get("category", "subject"), TSV_IMAGE)


# ---------------------------------------------------------------------------------- MMStar


def _mmstar(row: Row, uid: str, columns: list[str] | None,
            images: tuple[str, ...]) -> BenchItem:
    """Options embedded in the question (hub parquet) or in columns (the TSV); the breakdown is
    the category, with the l2 category beside it."""
    question = question_stem(row.text("question"))
    meta = {"group": str(row.get("category") or "unknown"),
            "l2": str(row.get("l2_category") or row.get("l2-category") or "unknown")}
    if columns and options_in_text(question) is None:
        return _choice(row, uid, question, columns, row.text("answer"), meta, images)
    return _choice(row, uid, question, columns or options_in_text(question), row.text("answer"),
                   meta, images, shown=True)


def mmstar_hub(row: Row) -> BenchItem:
    return _mmstar(row, row.uid("index"), row.options_from_columns(), HUB_IMAGE)


def mmstar_tsv(row: Row) -> BenchItem:
    return _mmstar(row, row.uid("index"), row.options_from_columns(), TSV_IMAGE)
