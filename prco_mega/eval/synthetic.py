"""Held-out evaluation as in the paper: greedy decoding, Observer caption, then the Solver WITH
the image.

    result = evaluate(engine, PromptSet(), tasks, observer_max_tokens=1024,
                      solver_max_tokens=2048, mode="prco")
    result.summary()["solver/accuracy"], result.summary()["observer/perception_acc"]

Mode "prco": the Observer captions each task, and the Solver answers from (image, question,
caption): the test-time pipeline of a PRCO policy. Mode "single" (GRPO/DAPO baselines): the answer
comes from the single look-and-answer prompt, and the Observer prompt is still asked for a caption
(the policy is one set of weights and can always be asked), so every run reports perception.
Each stage is one engine call for all tasks. Captions are scored from the scene facts
(`perception_accuracy`) and checked for leakage with the rule checker (cheap, deterministic; the
LLM judge is a training-time choice). Metric names match the training metrics of `algo.credit`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from statistics import fmean
from typing import Any

from prco_mega.data.captions import misread_keeps_answer, needed_readings, perception_accuracy
from prco_mega.rewards.format import format_score, observer_format_ok
from prco_mega.rewards.leakage import rule_leak
from prco_mega.rewards.verifier import verify
from prco_mega.roles.prompts import PromptSet
from prco_mega.rollout.engine import Generation, RolloutEngine, SamplingSettings
from prco_mega.rollout.two_stage import engine_eos, request_of, solver_caption
from prco_mega.types import Task

MODES = ("prco", "single")


@dataclass
class EvalRecord:
    """One task's greedy caption and answer, with their scores."""

    uid: str
    family: str
    answer: str
    """Gold answer."""
    caption: str
    """Observer caption as the Solver saw it (EOS and control tokens removed)."""
    caption_tokens: int
    perception: float | None
    """Fraction of the needed scene facts the caption states correctly; None without facts."""
    leak: int
    """1 when the rule checker finds the answer given away in the caption."""
    caption_format_ok: bool
    """The caption is a bullet list without an answer box (`observer_format_ok`)."""
    response: str
    """Solver answer (mode "prco") or single look-and-answer response (mode "single")."""
    response_tokens: int
    correct: float
    """V(y, a) in {0, 1}."""
    format: float
    """F(y) in [0, 1]."""
    truncated: bool
    """The answer hit the token budget (finish reason "length")."""
    sampled_perception: float | None = None
    """Mean perception of the captions sampled for this task at the rollout's settings (None when
    `evaluate` was not asked for them, or without facts)."""
    misread_kept_answer: bool | None = None
    """The caption misstates a needed fact, yet its values give the gold answer (a misread the
    Observer's reward cannot see: `misread_keeps_answer`); None without facts."""
    readings: list[tuple[str, str | None]] | None = None
    """(true value, stated value or None) of each needed fact in the greedy caption."""
    sampled_hits: list[tuple[str, float]] | None = None
    """(true value, share of the sampled captions that state it right) of each needed fact."""
    solver_prompt_ids: list[int] = field(default_factory=list, repr=False)
    """[P] the answering prompt as the engine saw it (image pads expanded); not serialised."""


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return fmean(kept) if kept else None


def aggregate(records: list[EvalRecord]) -> dict[str, float | None]:
    """Means over records (perception over the records that have facts; None when none has).

    `solver/format_rate` is the fraction of answers with F(y) = 1; `solver/format` the mean F(y).
    """
    return {
        "tasks": float(len(records)),
        "solver/accuracy": _mean(r.correct for r in records),
        "solver/format": _mean(r.format for r in records),
        "solver/format_rate": _mean(float(r.format == 1.0) for r in records),
        "solver/response_len": _mean(r.response_tokens for r in records),
        "solver/truncated_rate": _mean(float(r.truncated) for r in records),
        "observer/perception_acc": _mean(r.perception for r in records),
        "observer/perception_acc_sampled": _mean(r.sampled_perception for r in records),
        "observer/misread_kept_answer_rate": _mean(r.misread_kept_answer for r in records),
        "observer/leak_rate": _mean(r.leak for r in records),
        "observer/format_rate": _mean(float(r.caption_format_ok) for r in records),
        "observer/caption_len": _mean(r.caption_tokens for r in records),
    }


MAX_VALUES_PER_FAMILY = 12
"""Families with more distinct true values (bar heights, angles) get no per-value table: each
value would hold a handful of facts."""


def perception_by_value(records: list[EvalRecord]) -> dict[str, dict[str, dict[str, Any]]]:
    """{family: {true value: facts, greedy (share read right), sampled (mean share of sampled
    captions reading it right, or None), misreads ({stated value or "none": count})}}: which
    values the policy reads, and what it reads instead. A greedy caption shows the mode, so a
    value the policy half-knows can read 0% here and 40% sampled."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for family in sorted({r.family for r in records if r.readings}):
        rows: dict[str, dict[str, Any]] = {}
        mine = [r for r in records if r.family == family and r.readings]
        for r in mine:
            for k, (truth, stated) in enumerate(r.readings):
                row = rows.setdefault(truth, {"facts": 0, "right": 0, "sampled": [],
                                              "misreads": {}})
                row["facts"] += 1
                if stated == truth:
                    row["right"] += 1
                else:
                    key = "none" if stated is None else stated
                    row["misreads"][key] = row["misreads"].get(key, 0) + 1
                if r.sampled_hits:
                    row["sampled"].append(r.sampled_hits[k][1])
        if len(rows) > MAX_VALUES_PER_FAMILY:
            continue
        out[family] = {v: {"facts": row["facts"], "greedy": row["right"] / row["facts"],
                           "sampled": fmean(row["sampled"]) if row["sampled"] else None,
                           "misreads": dict(sorted(row["misreads"].items(), key=lambda kv: -kv[1]))}
                       for v, row in sorted(rows.items(), key=lambda kv: float(Fraction(kv[0])))}
    return out


@dataclass
class EvalResult:
    mode: str
    records: list[EvalRecord]
    """One per task, in the order of the task list."""

    @property
    def metrics(self) -> dict[str, float | None]:
        return aggregate(self.records)

    def per_family(self) -> dict[str, dict[str, float | None]]:
        families = sorted({r.family for r in self.records})
        return {f: aggregate([r for r in self.records if r.family == f]) for f in families}

    def summary(self) -> dict[str, Any]:
        """JSON-ready aggregates: `mode`, the metrics of `aggregate`, `per_family`, and
        `perception_by_value`."""
        return {"mode": self.mode, **self.metrics, "per_family": self.per_family(),
                "perception_by_value": perception_by_value(self.records)}

    def to_dict(self) -> dict[str, Any]:
        """`summary()` plus every record (without prompt ids), for a JSON file."""
        records = [{k: v for k, v in asdict(r).items() if k != "solver_prompt_ids"}
                   for r in self.records]
        return {**self.summary(), "records": records}


def greedy(max_new_tokens: int) -> SamplingSettings:
    """Greedy decoding, one sample, no log-probs (evaluation trains nothing)."""
    return SamplingSettings(n=1, temperature=0.0, max_new_tokens=max_new_tokens, logprobs=False)


def _generate_once(engine: RolloutEngine, prompts: list, max_new_tokens: int) -> list[Generation]:
    samples = engine.generate([request_of(p) for p in prompts], greedy(max_new_tokens))
    return [s[0] for s in samples]


def _record(task: Task, caption_gen: Generation, caption: str,
            answer_gen: Generation) -> EvalRecord:
    return EvalRecord(
        uid=task.uid, family=task.family, answer=task.answer, caption=caption,
        caption_tokens=len(caption_gen.token_ids),
        perception=perception_accuracy(caption, task.facts) if task.facts else None,
        misread_kept_answer=misread_keeps_answer(caption, task.facts) if task.facts else None,
        readings=needed_readings(caption, task.facts) if task.facts else None,
        leak=rule_leak(caption, task.answer), caption_format_ok=observer_format_ok(caption),
        response=answer_gen.text, response_tokens=len(answer_gen.token_ids),
        correct=verify(answer_gen.text, task.answer, task.choices),
        format=format_score(answer_gen.text), truncated=answer_gen.finish_reason == "length",
        solver_prompt_ids=list(answer_gen.prompt_ids))


def evaluate(engine: RolloutEngine, prompts: PromptSet, tasks: list[Task], *,
             observer_max_tokens: int, solver_max_tokens: int, mode: str = "prco",
             sampled_captions: SamplingSettings | None = None, offset: int = 0) -> EvalResult:
    """Greedy evaluation of the engine's current policy on `tasks` (held out: the caller picks
    them from another seed than training's). Two engine calls: captions, then answers; with
    `sampled_captions` a third scores `n` captions per task sampled at those settings (what RL
    trains on, where greedy shows only the mode), task i seeded as the held-out set's task
    `offset + i`, so any split of the set over engines samples the same captions."""
    if mode not in MODES:
        raise ValueError(f"evaluation mode {mode!r} must be one of {MODES}")
    if not tasks:
        raise ValueError("evaluate needs at least one task (got an empty task list)")
    eos = engine_eos(engine)
    caption_gens = _generate_once(engine, [prompts.observer(t) for t in tasks], observer_max_tokens)
    captions = [solver_caption(g.text, eos) for g in caption_gens]
    answer_prompt: Callable[[Task, str], Any] = (
        (lambda t, c: prompts.solver(t, c, with_image=True)) if mode == "prco"
        else (lambda t, c: prompts.single(t)))
    answer_prompts = [answer_prompt(t, c) for t, c in zip(tasks, captions, strict=True)]
    answer_gens = _generate_once(engine, answer_prompts, solver_max_tokens)
    records = [_record(t, cg, c, ag)
               for t, cg, c, ag in zip(tasks, caption_gens, captions, answer_gens, strict=True)]
    if sampled_captions is not None:
        sets = engine.generate([request_of(prompts.observer(t), offset + i)
                                for i, t in enumerate(tasks)], sampled_captions)
        for record, task, gens in zip(records, tasks, sets, strict=True):
            if task.facts:
                texts = [solver_caption(g.text, eos) for g in gens]
                record.sampled_perception = fmean(perception_accuracy(c, task.facts) for c in texts)
                reads = [needed_readings(c, task.facts) for c in texts]
                record.sampled_hits = [(truth, fmean(r[k][1] == truth for r in reads))
                                       for k, (truth, _) in enumerate(reads[0])] if reads else None
    return EvalResult(mode, records)


# ---------------------------------------------------------------- Observer signal (tools/observer_signal.py)


def reward_by_perception(pairs: Iterable[tuple[float, float]]) -> list[dict[str, float | int]]:
    """Rows (perception, captions, share, mean reward) of (caption perception, Observer reward)
    pairs grouped by perception, lowest first: how much of the Observer's reward its perception
    earns, and how much the Solver's luck on a wrong caption does."""
    groups: dict[float, list[float]] = {}
    for perception, reward in pairs:
        groups.setdefault(round(perception, 3), []).append(reward)
    total = sum(len(v) for v in groups.values())
    return [{"perception": p, "captions": len(r), "share": len(r) / total,
             "reward": fmean(r)} for p, r in sorted(groups.items())]
