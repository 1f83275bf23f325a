"""Benchmark inference as in the paper, resumable, on any `RolloutEngine`.

    report = run_eval(engine, Path("data/bench"), Path("out/eval"), select("all"),
                      EvalSettings(mode="prco"))

Greedy decoding. Mode "prco": the Observer captions (at most `observer_max_tokens`), then the
Solver answers WITH the image and the caption (at most `solver_max_tokens`). Mode "direct": the
single look-and-answer prompt (base models, GRPO/DAPO checkpoints). Items run in chunks of
`chunk_size`, one engine call per stage per chunk; each finished chunk is appended to
`predictions/<benchmark>.jsonl` and fsynced, so a killed run keeps every chunk it finished and a
rerun skips the uids already there (a line torn by the kill is dropped first). The engine is an
argument, so the same code later shards items over many engines.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prco_mega.data.images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from prco_mega.data.reader import RowError
from prco_mega.eval.benchmarks.scoring import BenchSummary, extract_answer, item_correct, summarise
from prco_mega.eval.benchmarks.readers import BenchItem, Benchmark, find_folder, read_benchmark
from prco_mega.eval.synthetic import greedy
from prco_mega.roles.prompts import Prompt, PromptSet
from prco_mega.rollout.engine import Generation, RolloutEngine
from prco_mega.rollout.two_stage import engine_eos, request_of, solver_caption
from prco_mega.types import Task

MODES = ("prco", "direct")
ChunkHook = Callable[[str, int], None]
"""Called as (benchmark, items written so far) after each chunk is durably written."""


@dataclass
class EvalSettings:
    """How the benchmarks are run (the paper's settings by default)."""

    mode: str = "prco"
    """"prco" (Observer caption, then Solver with the image) or "direct" (single prompt)."""
    observer_max_tokens: int = 1024
    solver_max_tokens: int = 2048
    chunk_size: int = 64
    """Items per engine call; also what a kill can lose."""
    on_error: str = "raise"
    """"raise": a bad row stops the run naming file and row; "skip": it is counted."""
    limit: int | None = None
    """Only the first `limit` items of each benchmark."""
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    """Images larger than this are resized onto the patch grid within it (1,280 image tokens
    by default, the project's image normalisation); None leaves them to the engine's processor
    (Qwen2.5-VL's own limit is ~16k tokens, more than most engines' max_model_len)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode ({self.mode!r}) must be one of {MODES}")
        if min(self.observer_max_tokens, self.solver_max_tokens, self.chunk_size) < 1:
            raise ValueError(f"observer_max_tokens ({self.observer_max_tokens}), "
                             f"solver_max_tokens ({self.solver_max_tokens}) and chunk_size "
                             f"({self.chunk_size}) must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit ({self.limit}) must be >= 1")
        if self.max_pixels is not None and self.max_pixels < DEFAULT_MIN_PIXELS:
            raise ValueError(f"max_pixels ({self.max_pixels}) must be >= {DEFAULT_MIN_PIXELS} "
                             "(four merged 28x28 patches) or None")


class PredictionLog:
    """A benchmark's JSONL of prediction records, one per item, appended as chunks finish."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, dict[str, Any]]:
        """uid -> record of the finished items. A torn last line (a kill mid-write) is cut off
        the file, so that the next append starts on a line of its own."""
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        records, good = {}, 0
        for line in data.splitlines(keepends=True):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            if not line.endswith(b"\n"):
                break
            records[record["uid"]] = record
            good += len(line)
        if good < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good)
        return records

    def append(self, records: list[dict[str, Any]]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            f.flush()
            os.fsync(f.fileno())


def _stage(engine: RolloutEngine, prompts: list[Prompt], max_tokens: int) -> list[Generation]:
    """One engine call for a whole stage of a chunk."""
    return [s[0] for s in engine.generate([request_of(p) for p in prompts], greedy(max_tokens))]


def prediction_record(benchmark: str, mode: str, task: Task, caption: Generation | None,
                      caption_text: str | None, answer: Generation) -> dict[str, Any]:
    """The JSONL record of one item: texts, lengths, extraction, correctness and the item's
    scoring fields (`meta`: options, types, breakdown group, WeMath/DynaMath keys)."""
    extracted = extract_answer(answer.text)
    return {
        "uid": task.uid, "benchmark": benchmark, "mode": mode, "question": task.question,
        "answer": task.answer, "extracted": extracted,
        "correct": item_correct(benchmark, extracted, task.answer, task.meta),
        "caption": caption_text, "caption_tokens": None if caption is None else len(
            caption.token_ids),
        "response": answer.text, "response_tokens": len(answer.token_ids),
        "truncated": answer.finish_reason == "length", **task.meta,
    }


def answer_chunk(engine: RolloutEngine, prompts: PromptSet, benchmark: str, tasks: list[Task],
                 settings: EvalSettings) -> list[dict[str, Any]]:
    """Greedy answers (and captions in mode "prco") for `tasks`: two engine calls, or one."""
    if settings.mode == "direct":
        captions: list[Generation | None] = [None] * len(tasks)
        texts: list[str | None] = [None] * len(tasks)
        answer_prompts = [prompts.single(t) for t in tasks]
    else:
        eos = engine_eos(engine)
        captions = list(_stage(engine, [prompts.observer(t) for t in tasks],
                               settings.observer_max_tokens))
        texts = [solver_caption(g.text, eos) for g in captions]
        answer_prompts = [prompts.solver(t, c, with_image=True) for t, c in zip(tasks, texts)]
    answers = _stage(engine, answer_prompts, settings.solver_max_tokens)
    return [prediction_record(benchmark, settings.mode, t, cg, c, a)
            for t, cg, c, a in zip(tasks, captions, texts, answers, strict=True)]


def _decoded(items: list[BenchItem], settings: EvalSettings, skipped: Counter) -> list[Task]:
    tasks = []
    for item in items:
        try:
            tasks.append(item.task_with_images(settings.max_pixels))
        except RowError as err:
            if settings.on_error == "raise":
                raise ValueError(f"{item.file}: row {item.row}: {err}") from err
            skipped[err.reason] += 1
    return tasks


@dataclass
class BenchRun:
    """What running one benchmark did."""

    records: list[dict[str, Any]]
    """One per item answered, old and new, in item order."""
    resumed: int
    """Items found finished in the log."""
    generated: int
    """Items answered by this run."""
    skipped: Counter = field(default_factory=Counter)


def run_benchmark(engine: RolloutEngine, prompts: PromptSet, benchmark: str,
                  items: list[BenchItem], log: PredictionLog, settings: EvalSettings,
                  on_chunk: ChunkHook | None = None) -> BenchRun:
    """Answer the items the log does not hold yet, chunk by chunk, appending each chunk."""
    done = log.load()
    if any(r.get("mode") != settings.mode for r in done.values()):
        raise ValueError(f"{log.path} holds predictions of another mode than {settings.mode!r}; "
                         "use another --out for it")
    todo = [item for item in items if item.task.uid not in done]
    run = BenchRun([], resumed=len(items) - len(todo), generated=0)
    for start in range(0, len(todo), settings.chunk_size):
        tasks = _decoded(todo[start:start + settings.chunk_size], settings, run.skipped)
        new = answer_chunk(engine, prompts, benchmark, tasks, settings) if tasks else []
        log.append(new)
        done.update((r["uid"], r) for r in new)
        run.generated += len(new)
        if on_chunk is not None:
            on_chunk(benchmark, run.resumed + run.generated)
    run.records = [done[i.task.uid] for i in items if i.task.uid in done]
    return run


@dataclass
class EvalReport:
    summaries: dict[str, BenchSummary]
    """Benchmark name -> summary, for the benchmarks that ran."""
    missing: list[str]
    """Benchmarks without a folder under the data root."""
    runs: dict[str, BenchRun]


def run_eval(engine: RolloutEngine, data_root: Path, out_dir: Path,
             benchmarks: list[Benchmark], settings: EvalSettings,
             prompts: PromptSet | None = None, on_chunk: ChunkHook | None = None,
             echo: Callable[[str], None] = print) -> EvalReport:
    """Read, answer and summarise each benchmark found under `data_root`; predictions go to
    `out_dir/predictions/<name>.jsonl`. Benchmarks without a folder are skipped with a line."""
    prompts = prompts or PromptSet()
    report = EvalReport({}, [], {})
    for bench in benchmarks:
        folder = find_folder(data_root, bench)
        if folder is None:
            echo(f"{bench.title}: no folder {'/'.join(bench.folders)} under {data_root}; skipped")
            report.missing.append(bench.name)
            continue
        read = read_benchmark(bench, folder, settings.on_error, settings.limit)
        log = PredictionLog(out_dir / "predictions" / f"{bench.name}.jsonl")
        run = run_benchmark(engine, prompts, bench.name, read.items, log, settings, on_chunk)
        run.skipped.update(read.skipped)
        report.runs[bench.name] = run
        report.summaries[bench.name] = summarise(bench.name, bench.metric, run.records)
        echo(f"{bench.title}: {len(run.records)} items ({run.resumed} resumed, {run.generated} "
             f"answered, {sum(run.skipped.values())} skipped)")
    return report
