"""Benchmark inference as in the paper, resumable, sharded over every engine of a torchrun world.

    loaded = discovery.check(Path("data/bench"), registry.select("all"))
    report = run_eval(engine, loaded, Path("out/eval"), EvalSettings(mode="prco"))

Greedy decoding. Mode "prco": the Observer captions (at most `observer_max_tokens`), then the
Solver answers WITH the image and the caption (at most `solver_max_tokens`). Mode "direct": the
single look-and-answer prompt (base models, GRPO/DAPO checkpoints). Items run in chunks of
`chunk_size`, one engine call per stage per chunk.

Sharding (`shard`, a `rollout.placement.Shard`): each engine (a group of `engine TP` ranks)
answers a deterministic contiguous block of every benchmark; greedy answers do not depend on
which engine gives them, so N engines give 1 engine's records item for item. Each engine's
leader appends each finished chunk to its own shard file, `predictions/shards/<name>.engine-E-
of-N.jsonl` (a world of one appends to `predictions/<name>.jsonl` itself), fsynced, so a kill
loses at most the chunks in flight. Rank 0 folds the shard files into `predictions/<name>.jsonl`
(records in item order) when a benchmark starts (what a killed run left) and when it ends; a
rerun, with any number of engines, skips every uid already there.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prco_mega.data.images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from prco_mega.data.reader import RowError
from prco_mega.eval.benchmarks.discovery import Loaded
from prco_mega.eval.benchmarks.rows import BenchItem
from prco_mega.eval.benchmarks.scoring import (
    extract_answer,
    item_correct,
    verifier_correct,
)
from prco_mega.eval.benchmarks.summary import BenchSummary, summarise
from prco_mega.eval.synthetic import greedy
from prco_mega.roles.prompts import Prompt, PromptSet
from prco_mega.rollout.engine import Generation, RolloutEngine
from prco_mega.rollout.placement import Shard, single_engine
from prco_mega.rollout.two_stage import engine_eos, request_of, solver_caption
from prco_mega.types import Task

MODES = ("prco", "direct")
ChunkHook = Callable[[str, int], None]
"""Called as (benchmark, items this engine has written) after each chunk is durably written."""


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
    also_verifier: bool = False
    """Also score every answer with the project's verifier (a second column)."""

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
    """A JSONL of prediction records, one per item, appended as chunks finish."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def load(self, repair: bool = True) -> dict[str, dict[str, Any]]:
        """uid -> record of the finished items. A torn last line (a kill mid-write) is ignored
        and, with `repair`, cut off the file so that the next append starts on its own line."""
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
        if repair and good < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good)
        return records

    def append(self, records: list[dict[str, Any]]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            f.flush()
            os.fsync(f.fileno())

    def replace(self, records: list[dict[str, Any]]) -> None:
        """Write exactly `records` (through a temporary file: never half a file)."""
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                       encoding="utf-8")
        os.replace(tmp, self.path)


def _stage(engine: RolloutEngine, prompts: list[Prompt], max_tokens: int) -> list[Generation]:
    """One engine call for a whole stage of a chunk."""
    return [s[0] for s in engine.generate([request_of(p) for p in prompts], greedy(max_tokens))]


def prediction_record(benchmark: str, mode: str, task: Task, caption: Generation | None,
                      caption_text: str | None, answer: Generation,
                      also_verifier: bool = False) -> dict[str, Any]:
    """The JSONL record of one item: texts, lengths, extraction, correctness and the item's
    scoring fields (`meta`: options, types, breakdown group, WeMath/DynaMath keys)."""
    extracted = extract_answer(benchmark, answer.text, task.meta)
    record = {
        "uid": task.uid, "benchmark": benchmark, "mode": mode, "question": task.question,
        "answer": task.answer, "extracted": extracted,
        "correct": item_correct(benchmark, extracted, task.answer, task.meta, answer.text),
        "caption": caption_text, "caption_tokens": None if caption is None else len(
            caption.token_ids),
        "response": answer.text, "response_tokens": len(answer.token_ids),
        "truncated": answer.finish_reason == "length", **task.meta,
    }
    if also_verifier:
        record["verifier_correct"] = verifier_correct(answer.text, task.answer, task.meta)
    return record


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
    return [prediction_record(benchmark, settings.mode, t, cg, c, a, settings.also_verifier)
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
    """What running one benchmark did (summed over engines)."""

    records: list[dict[str, Any]]
    """One per item answered, old and new, in item order (rank 0; empty elsewhere)."""
    resumed: int
    """Items found finished in the predictions."""
    generated: int
    """Items answered by this run."""
    skipped: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    """Engine time of this run's chunks (the slowest engine's)."""


def run_benchmark(engine: RolloutEngine, prompts: PromptSet, benchmark: str,
                  items: list[BenchItem], log: PredictionLog | None, settings: EvalSettings,
                  on_chunk: ChunkHook | None = None,
                  done: dict[str, dict[str, Any]] | None = None) -> BenchRun:
    """Answer the items not in `done` (default: the log's records), chunk by chunk, appending
    each chunk to `log` (None: another rank of this engine writes)."""
    done = dict(log.load() if done is None and log is not None else done or {})
    if any(r.get("mode") != settings.mode for r in done.values()):
        raise ValueError(f"predictions of {benchmark} hold another mode than {settings.mode!r}; "
                         "use another --out for it")
    todo = [item for item in items if item.task.uid not in done]
    run = BenchRun([], resumed=len(items) - len(todo), generated=0)
    t0 = time.perf_counter()
    for start in range(0, len(todo), settings.chunk_size):
        tasks = _decoded(todo[start:start + settings.chunk_size], settings, run.skipped)
        new = answer_chunk(engine, prompts, benchmark, tasks, settings) if tasks else []
        if log is not None:
            log.append(new)
        done.update((r["uid"], r) for r in new)
        run.generated += len(new)
        if on_chunk is not None:
            on_chunk(benchmark, run.resumed + run.generated)
    run.seconds = time.perf_counter() - t0
    run.records = [done[i.task.uid] for i in items if i.task.uid in done]
    return run


# ---------------------------------------------------------------------------------- shards


def predictions_path(out_dir: Path, name: str) -> Path:
    return out_dir / "predictions" / f"{name}.jsonl"


def shard_path(out_dir: Path, name: str, shard: Shard) -> Path:
    p = shard.placement
    return out_dir / "predictions" / "shards" / f"{name}.engine-{p.engine_index}-of-" \
                                                f"{p.num_engines}.jsonl"


def merge_predictions(out_dir: Path, name: str, uids: list[str]) -> dict[str, dict[str, Any]]:
    """Fold every shard file of `name` into its predictions file (records of `uids` in that
    order, then any others, e.g. of a larger --limit, as they were) and remove the shard
    files. Rank 0 only. Returns uid -> record."""
    final = PredictionLog(predictions_path(out_dir, name))
    records = final.load()
    parts = sorted((out_dir / "predictions" / "shards").glob(f"{name}.engine-*.jsonl"))
    for part in parts:
        records.update(PredictionLog(part).load(repair=False))
    order = {u: i for i, u in enumerate(uids)}
    ordered = sorted(records.values(), key=lambda r: order.get(r["uid"], len(order)))
    if parts or [r["uid"] for r in ordered] != list(records):
        final.replace(ordered)
    for part in parts:
        part.unlink()
    return {r["uid"]: r for r in ordered}


@dataclass
class EvalReport:
    summaries: dict[str, BenchSummary]
    """Benchmark name -> summary, for the benchmarks that ran."""
    missing: list[str]
    """Benchmarks without a folder under the data root."""
    runs: dict[str, BenchRun]
    problems: dict[str, str] = field(default_factory=dict)
    """Benchmarks skipped for a folder problem (on_error="skip") -> the problem."""


def _run_one(engine: RolloutEngine, prompts: PromptSet, loaded: Loaded, out_dir: Path,
             settings: EvalSettings, shard: Shard, on_chunk: ChunkHook | None) -> BenchRun:
    """One benchmark on every engine: merge what an earlier run left, answer this engine's
    block, merge again; the run's counts summed over engines (records on rank 0)."""
    p, name = shard.placement, loaded.bench.name
    uids = [i.task.uid for i in loaded.items]
    if p.rank == 0:
        merge_predictions(out_dir, name, uids)
    shard.gather(None)  # every rank reads the merged file only after rank 0 wrote it
    done = PredictionLog(predictions_path(out_dir, name)).load(repair=False)
    block = shard.block(len(loaded.items))
    mine = loaded.items[block.start:block.stop]
    log = None
    if p.is_engine_leader:
        log = PredictionLog(predictions_path(out_dir, name) if p.num_engines == 1
                            else shard_path(out_dir, name, shard))
    run = run_benchmark(engine, prompts, name, mine, log, settings, on_chunk, done)
    parts = shard.gather((run.resumed, run.generated, dict(run.skipped), run.seconds))
    total = BenchRun([], sum(x[0] for x in parts), sum(x[1] for x in parts),
                     sum((Counter(x[2]) for x in parts), Counter(loaded.skipped)),
                     max(x[3] for x in parts))
    if p.rank == 0:
        merged = merge_predictions(out_dir, name, uids)
        total.records = [merged[u] for u in uids if u in merged]
    shard.gather(None)
    return total


def run_eval(engine: RolloutEngine, loaded: list[Loaded], out_dir: Path, settings: EvalSettings,
             prompts: PromptSet | None = None, shard: Shard | None = None,
             on_chunk: ChunkHook | None = None,
             echo: Callable[[str], None] = print) -> EvalReport:
    """Answer and summarise each loaded benchmark (on every rank of the world; summaries and
    lines on rank 0). Benchmarks without a folder, or with a folder problem under
    on_error="skip", are reported and skipped."""
    prompts, shard = prompts or PromptSet(), shard or single_engine()
    host = shard.placement.rank == 0
    report = EvalReport({}, [], {})
    for one in loaded:
        bench = one.bench
        if one.found.folder is None or one.found.problem:
            if one.found.folder is None:
                report.missing.append(bench.name)
            else:
                report.problems[bench.name] = one.found.problem or ""
            if host:
                echo(f"{bench.title}: " + (one.found.problem or f"no folder "
                     f"({'/'.join(bench.folders)}) under the data root") + "; skipped")
            continue
        run = _run_one(engine, prompts, one, out_dir, settings, shard, on_chunk)
        report.runs[bench.name] = run
        if host:
            report.summaries[bench.name] = summarise(bench.name, bench.metric, run.records)
            rate = run.generated / run.seconds if run.seconds and run.generated else 0.0
            echo(f"{bench.title}: {len(run.records)} items ({run.resumed} resumed, "
                 f"{run.generated} answered in {run.seconds:.1f} s, {rate:.2f} items/s, "
                 f"{sum(run.skipped.values())} skipped)")
    return report
