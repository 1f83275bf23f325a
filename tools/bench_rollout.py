"""Rollout benchmarks on the real loop: colocated engines, and separate placement under staleness.

    .venv/bin/python tools/bench_rollout.py [--steps 4] [--nproc 1 2] [key=value ...]
    .venv/bin/prco-mega bench rollout --separate --staleness 0 1 2 4 [--partial] [--steps 6]
                                      [--estimate configs/qwen25vl_32b_h100x32.yaml]

Simplifications, first:
- Every row is `prco-mega train configs/tiny_cpu.yaml` under torchrun for a few RL steps on the
  same tasks and seeds, warm start off: the random tiny model. The first step (engine and kernel
  warm-up) is in every run; the colocated rows leave it out of their means.
- Colocated rows (`--nproc N ...`; the default without `--separate` is 1 and 2): N engines of
  TP=1, the learner at DP=N, at the config's token limits (the random model writes captions and
  answers up to them, a steady sampling load): sampled response tokens per rollout second,
  seconds per phase, the bytes each sync pushed into an engine and received over the network.
- Separate rows (`--separate`): 1 learner rank + 1 engine rank (`link.split_world`), one row per
  `rollout.max_staleness` k of `--staleness` (default 0 1), and with `--partial` one more per
  k >= 1 with `rollout.partial_rollouts=true`. They run LONG_TAIL: limits wide enough that the
  random model's own stops show (it ends a sequence with a small chance per token, so lengths
  are roughly geometric up to the cap: most well short of it, a few at it), so a step's sampling
  lasts as long as its longest sequence. Every step's rollouts are saved and read back for the
  lengths (p50/p90/max per step, printed) and the sampled tokens.
- A separate step's wall time is the time between consecutive lines of its metrics.jsonl as
  this script sees them appear (polled every POLL_S); step 0's is its timers' sum. s/step and
  tokens/s cover the whole run: the k steps sampled before the learner's first update and the
  last k steps that nothing samples ahead of are in it, as they are in any run (a short run
  charges a large k more). On a shared machine the load moves every row's speed; step/rollout
  (s/step over the engine's mean `time/rollout`) does not move with it: rows without partial
  rollouts sample the same lengths (same seeds), so it says how much of the step the engine's
  sampling leaves uncovered.
- Idle (`idle_fractions`): the learner is busy in `time/learn` and in the weight transfer, the
  engine in `time/rollout` + `time/score` and the same transfer; idle is the rest of the wall
  time. The learner's send and the engine's receive are collectives, so at k >= 1 the learner's
  `time/sync` also holds its wait for the engine to finish sampling ahead: the transfer is taken
  as the k = 0 row's mean `time/sync` (there the engine already waits to receive), and sync
  beyond it is learner idle. The engine's untimed work (saving the rollouts) counts as idle;
  with partial rollouts its `time/rollout` also holds the weights it takes between chunks.
- Lag: per step, the counts of `train/policy_lag` over the run; per trajectory, the
  `train/policy_lag_hist/<k>` fractions averaged over the steps (where the metrics have them).
- `--estimate CONFIG` carries the measured lengths (as fractions of their caps) to a cluster
  config and prints what k buys there: a model (`step_costs` with the assumed `Costs`, the
  planner's KV cache, `blocking_schedule`, `free_schedule`), not a measurement.
"""
from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean

from prco_mega.cluster.dims import model_dims, total_params
from prco_mega.cluster.memory import kv_bytes_per_token
from prco_mega.cluster.plan import plan_config
from prco_mega.config import load_config
from prco_mega.eval.report import format_table

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny_cpu.yaml"
DEFAULTS = ["warm_start.steps=0", "run.eval_tasks=2", "learner.checkpoint.interval=0",
            "run.loggers=[console,jsonl]"]
SEPARATE = ["cluster.rollout_placement=separate", "cluster.rollout_nodes=1", "cluster.nodes=1",
            "cluster.gpus_per_node=1"]
LONG_TAIL = ["data.prompts_per_step=4", "observer.n=4", "solver.n=4",
             "observer.max_new_tokens=384", "solver.max_new_tokens=384",
             "engine.max_model_len=1280", "learner.batching.micro_batch_tokens=1280"]
"""16 captions and 64 answers a step, each up to 384 tokens (the random model stops a sequence
after ~200 tokens on average: about one in six reaches the cap)."""
PARTIAL = "rollout.partial_rollouts=true"
POLL_S = 0.2


@dataclass
class Run:
    """One benchmark run's record."""

    rows: list[dict]
    """metrics.jsonl, one dict per step."""
    arrivals: list[float]
    """When each row's line appeared in metrics.jsonl (time.monotonic seconds)."""
    lengths: list[tuple[list[int], list[int]]]
    """Per saved step: the caption and the answer lengths in tokens ([] without saved rollouts)."""


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def read_lengths(rollouts: Path) -> list[tuple[list[int], list[int]]]:
    """Caption and answer lengths of every saved step under `rollouts`, oldest step first."""
    out = []
    for records in sorted(rollouts.glob("step_*/records.json")):
        tasks = json.loads(records.read_text())["tasks"]
        captions = [c for t in tasks for c in t["captions"]]
        answers = [a["tokens"] for c in captions for a in c["answers"]]
        answers += [a["tokens"] for t in tasks for a in t["answers"]]  # baselines' single answers
        out.append(([c["tokens"] for c in captions], answers))
    return out


def run_world(nproc: int, steps: int, overrides: list[str], out: Path, cache: Path,
              env_extra: dict[str, str] | None = None) -> Run:
    """A `steps`-step run in a world of `nproc` ranks, timing each step's metrics line."""
    args = ["train", str(CONFIG), *DEFAULTS, f"run.steps={steps}", f"run.output_dir={out}",
            f"model.cache_dir={cache}", f"run.name=n{nproc}", *overrides]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(nproc), "-m", "prco_mega.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, 2 // nproc)),
           "VLLM_LOGGING_LEVEL": "ERROR", "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    metrics, arrivals = out / f"n{nproc}" / "metrics.jsonl", []
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    while proc.poll() is None:
        arrivals += [time.monotonic()] * (_lines(metrics) - len(arrivals))
        time.sleep(POLL_S)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    arrivals += [time.monotonic()] * (len(rows) - len(arrivals))
    return Run(rows, arrivals, read_lengths(out / f"n{nproc}" / "rollouts"))


# ------------------------------------------------------------------ separate rows: pure parts
def quantiles(xs: list[int]) -> tuple[int, int, int]:
    """(p50, p90, max) by nearest rank."""
    s = sorted(xs)
    return s[(len(s) - 1) // 2], s[max(0, -(-9 * len(s) // 10) - 1)], s[-1]


def step_walls(rows: list[dict], arrivals: list[float]) -> list[float]:
    """Each step's wall seconds: step 0 its timers' sum (nothing marks its start), then the
    gaps between consecutive metrics lines."""
    first = sum(rows[0].get(f"time/{p}", 0.0) for p in ("wait", "learn", "sync"))
    return [first] + [b - a for a, b in itertools.pairwise(arrivals)]


def idle_fractions(rows: list[dict], walls: list[float], transfer: float) -> tuple[float, float]:
    """(engine idle, learner idle) over the run: 1 - busy / wall, the learner busy in
    `time/learn` and up to `transfer` of each `time/sync` (the rest is its wait for the
    engine's receive), the engine in `time/rollout` + `time/score` and `transfer` per step."""
    wall = sum(walls)
    learner = sum(r["time/learn"] + min(r["time/sync"], transfer) for r in rows)
    engine = sum(r["time/rollout"] + r.get("time/score", 0.0) + transfer for r in rows)
    return max(0.0, 1 - engine / wall), max(0.0, 1 - learner / wall)


def lag_counts(rows: list[dict]) -> str:
    """How many steps trained at each policy lag: "0:1 1:5"."""
    lags = [int(r["train/policy_lag"]) for r in rows if "train/policy_lag" in r]
    return " ".join(f"{k}:{lags.count(k)}" for k in sorted(set(lags)))


def trajectory_lags(rows: list[dict]) -> str | None:
    """The step-averaged fraction of trajectories at each lag, "0:0.17 1:0.83"; None where the
    metrics have no `train/policy_lag_hist/<k>`."""
    prefix = "train/policy_lag_hist/"
    keys = sorted({k for r in rows for k in r if k.startswith(prefix)},
                  key=lambda k: int(k.removeprefix(prefix).rstrip("+")))
    if not keys:
        return None
    return " ".join(f"{k.removeprefix(prefix)}:{fmean(r.get(k, 0.0) for r in rows):.2f}"
                    for k in keys)


def separate_row(k: int, partial: bool, run: Run, transfer: float) -> dict:
    """A table row for separate placement at staleness `k`."""
    rows, walls = run.rows, step_walls(run.rows, run.arrivals)
    engine_idle, learner_idle = idle_fractions(rows, walls, transfer)
    mean = {p: fmean(r.get(f"time/{p}", 0.0) for r in rows)
            for p in ("rollout", "learn", "sync", "wait")}
    tokens = sum(sum(c) + sum(a) for c, a in run.lengths)
    step = sum(walls) / len(rows)
    return {"k": k, "partial": "on" if partial else "off", "s/step": f"{step:.2f}",
            "step/rollout": f"{step / mean['rollout']:.3f}",
            "engine idle": f"{engine_idle:.0%}", "learner idle": f"{learner_idle:.0%}",
            "tokens/s": f"{tokens / sum(walls):.0f}" if tokens else None,
            **{f"{p} s": f"{v:.2f}" for p, v in mean.items()},
            "lag: steps": lag_counts(rows), "lag: trajectories": trajectory_lags(rows),
            "mixed": (f"{fmean(r.get('rollout/mixed_versions', 0.0) for r in rows):.1f}"
                      if partial else None)}


def length_rows(label: str, run: Run) -> list[dict]:
    """p50/p90/max of caption and answer lengths per step."""
    return [{"row": label, "step": s, "captions p50/p90/max": "/".join(map(str, quantiles(c))),
             "answers p50/p90/max": "/".join(map(str, quantiles(a)))}
            for s, (c, a) in enumerate(run.lengths)]


# ------------------------------------------------------------------ colocated rows
def sampled_tokens(row: dict, prompts: int, g_o: int, g_s: int) -> float:
    """Response tokens the step sampled: G_O captions per task, G_S answers per caption."""
    return (row.get("observer/caption_len", 0.0) * prompts * g_o
            + row["solver/response_len"] * prompts * g_o * g_s)


def summary(nproc: int, rows: list[dict], cfg) -> dict:
    steady = rows[1:] or rows
    tokens = fmean(sampled_tokens(r, cfg.data.prompts_per_step, cfg.observer.n, cfg.solver.n)
                   for r in steady)
    rollout = fmean(r["time/rollout"] for r in steady)
    phases = {p: fmean(r.get(f"time/{p}", 0.0) for r in steady)
              for p in ("rollout", "score", "learn", "sync")}
    return {"ranks": nproc, "engines": nproc, "tokens/step": f"{tokens:.0f}",
            "tokens/s": f"{tokens / rollout:.0f}", **{f"{p} s": f"{v:.2f}" for p, v in phases.items()},
            "step s": f"{sum(phases.values()):.2f}",
            "pushed MiB": f"{fmean(r['sync/bytes'] for r in steady) / 2**20:.1f}",
            "received MiB max/mean": (f"{fmean(r['sync/received_bytes_max'] for r in steady) / 2**20:.1f}"
                                      f" / {fmean(r['sync/received_bytes_mean'] for r in steady) / 2**20:.1f}")}


# ------------------------------------------------------------------ the schedule model
def makespan(lengths: list[int], slots: int) -> int:
    """Decode iterations until every sequence is done, `slots` at a time, each free slot taking
    the next sequence (continuous batching): the longest sequences started last set the end."""
    free = [0] * slots
    for n in lengths:
        heapq.heappush(free, heapq.heappop(free) + n)
    return max(free)


def blocking_schedule(sample_s: list[float], learn_s: list[float], sync_s: float,
                      k: int) -> list[float]:
    """The learner's step end times under `runtime.engine_worker` without partial rollouts: per
    step s the engine samples s if it has not yet, hands it over (X(s), both sides meet), samples
    every step up to s + k while the learner trains, then both meet again for W(s+1), which
    takes `sync_s`. A slow sample ahead holds the learner's send."""
    n, engine, learner, nxt, ends = len(sample_s), 0.0, 0.0, 0, []
    for s in range(n):
        if nxt == s:
            engine, nxt = engine + sample_s[s], s + 1
        learner = engine = max(engine, learner)  # X(s)
        learner += learn_s[s]
        while nxt <= min(s + k, n - 1):
            engine, nxt = engine + sample_s[nxt], nxt + 1
        learner = engine = max(engine, learner) + sync_s  # W(s+1)
        ends.append(learner)
    return ends


def free_schedule(sample_s: list[float], learn_s: list[float], sync_s: float,
                  k: int) -> list[float]:
    """The learner's step end times when the engine never waits for the learner but to stay
    within the bound: it samples step t as soon as W(t - k) is out (the end of the learner's step
    t - k - 1) and takes the newest weights between steps at no cost of its own; the learner's
    send takes `sync_s` and never waits."""
    n, engine, ready, ends = len(sample_s), 0.0, [], []
    for t in range(n + k + 1):
        if t - k - 1 >= 0:  # learner step t - k - 1: its sample was drawn at t - k - 1 < t
            s = t - k - 1
            ends.append(max(ends[-1] if ends else 0.0, ready[s]) + learn_s[s] + sync_s)
        if t < n:
            engine = max(engine, ends[t - k - 1] if t - k >= 1 else 0.0) + sample_s[t]
            ready.append(engine)
    return ends


@dataclass(frozen=True)
class Costs:
    """Assumed H100 costs for `--estimate` (none is measured here)."""

    decode_iter_s: float = 0.030
    """One decode iteration of one engine's batch (a 32B model at TP=4: ~16 GB of weights plus the
    batch's KV read per GPU per token; memory-bound, so taken as flat in the batch size)."""
    peak_flops: float = 989e12
    """Dense bf16 FLOP/s of one H100 SXM."""
    learner_mfu: float = 0.40
    prefill_mfu: float = 0.50
    image_tokens: int = 1024
    """Image tokens per prompt (the Observer's, and the Solver's after the warm-up)."""
    text_tokens: int = 128
    """Question and instructions per prompt."""
    sync_s: float = 5.0
    """Learner -> engines weight push (62 GiB in bf16 across the nodes' network)."""
    separate_memory_utilization: float = 0.9
    """vLLM's share of an engine GPU in separate placement (colocated: the config's, as the
    planner counts its KV cache)."""


def step_costs(cfg, caption_frac: list[float], answer_frac: list[float], costs: Costs,
               learner_gpus: int, engines: int, kv_tokens: int,
               rng: random.Random) -> tuple[float, float]:
    """(sampling s, learning s) of one step of `cfg`: lengths drawn from the measured fractions
    of their caps, the step's tasks split evenly over `engines` (the slowest sets the time),
    Observer then Solver, each engine running as many sequences as `kv_tokens` holds at their
    mean length (at most `engine.max_num_seqs`); the learner at 8 N FLOPs a token (forward,
    backward, full recompute)."""
    n_params, tp = total_params(model_dims(cfg.cluster.model)), cfg.engine.tensor_parallel_size
    n_cap = cfg.data.prompts_per_step * cfg.observer.n
    captions = [round(rng.choice(caption_frac) * cfg.observer.max_new_tokens) for _ in range(n_cap)]
    answers = [round(rng.choice(answer_frac) * cfg.solver.max_new_tokens)
               for _ in range(n_cap * cfg.solver.n)]
    prompt = costs.image_tokens + costs.text_tokens
    # one request per task (G_O captions) and per caption (G_S answers): one prefill each
    prefill = (cfg.data.prompts_per_step * prompt + sum(prompt + c for c in captions)) / engines
    context = prompt + fmean(captions)
    slots = [min(cfg.engine.max_num_seqs, int(kv_tokens // c)) for c in (context, context + fmean(answers))]
    iters = max(makespan(captions[e::engines], slots[0]) for e in range(engines)) \
        + max(makespan(answers[e::engines], slots[1]) for e in range(engines))
    sample = (iters * costs.decode_iter_s
              + 2 * n_params * prefill / (tp * costs.peak_flops * costs.prefill_mfu))
    tokens = n_cap * prompt + sum(captions) + (prompt * n_cap + sum(captions)) * cfg.solver.n \
        + sum(answers)
    learn = 8 * n_params * tokens / (learner_gpus * costs.peak_flops * costs.learner_mfu)
    return sample, learn


def estimate(path: str, lengths: list[tuple[list[int], list[int]]], caps: tuple[int, int],
             staleness: list[int], steps: int = 40, costs: Costs | None = None) -> str:
    """What k buys on the cluster config at `path`: its GPUs split between the learner and engines
    of its engine TP (half and half, and three quarters to the learner), next to its own colocated
    placement; lengths as measured, as fractions of the tiny caps `caps`."""
    cfg, costs = load_config(path, []), costs or Costs()
    gpus, tp = cfg.cluster.nodes * cfg.cluster.gpus_per_node, cfg.engine.tensor_parallel_size
    cap_f = [c / caps[0] for cs, _ in lengths for c in cs]
    ans_f = [a / caps[1] for _, answers in lengths for a in answers]
    colocated_kv = plan_config(path).kv_tokens
    per_token = kv_bytes_per_token(model_dims(cfg.cluster.model), tp)
    separate_kv = colocated_kv + int((costs.separate_memory_utilization
                                      - cfg.engine.gpu_memory_utilization)
                                     * cfg.cluster.gpu_memory_gib * 2**30 // per_token)

    def per_step(learner_gpus: int, engines: int, kv: int) -> tuple[list[float], list[float]]:
        both = [step_costs(cfg, cap_f, ans_f, costs, learner_gpus, engines, kv, random.Random(s))
                for s in range(steps)]
        return [s for s, _ in both], [lr for _, lr in both]

    sample, learn = per_step(gpus, gpus // tp, colocated_kv)
    rows = [{"placement": f"colocated, {gpus} GPUs", "k": 0, "sample s": f"{fmean(sample):.0f}",
             "learn s": f"{fmean(learn):.0f}",
             "s/step": f"{fmean(sample) + fmean(learn) + costs.sync_s:.0f}"}]
    for learner_gpus in (gpus // 2, 3 * gpus // 4):
        sample, learn = per_step(learner_gpus, (gpus - learner_gpus) // tp, separate_kv)
        for k in staleness:
            blocking = blocking_schedule(sample, learn, costs.sync_s, k)[-1] / steps
            free = free_schedule(sample, learn, costs.sync_s, k)[-1] / steps
            rows.append({"placement": f"separate {learner_gpus}+{gpus - learner_gpus}", "k": k,
                         "sample s": f"{fmean(sample):.0f}", "learn s": f"{fmean(learn):.0f}",
                         "s/step": f"{blocking:.0f}", "s/step, non-blocking receive": f"{free:.0f}"})
    return format_table(rows, {k: k for k in {**rows[0], **rows[-1]}})


# ------------------------------------------------------------------ main
def separate_runs(args, overrides: list[str], tmp: Path) -> list[tuple[int, bool, Run]]:
    """(k, partial, run) for every separate row, k = 0 first."""
    runs = []
    for k in sorted(set(args.staleness)):
        for partial in (False, True) if args.partial and k >= 1 else (False,):
            extra = [*SEPARATE, *LONG_TAIL, f"rollout.max_staleness={k}",
                     "saved_rollouts.every=1", "saved_rollouts.tasks=64",
                     f"saved_rollouts.keep={args.steps}", *([PARTIAL] if partial else []),
                     *overrides]
            runs.append((k, partial, run_world(2, args.steps, extra, tmp / f"sep{k}{partial:d}",
                                               tmp / "cache", {"PRCO_LEARNER_WORLD_SIZE": "1"})))
    return runs


def print_separate(runs: list[tuple[int, bool, Run]], args, overrides: list[str]) -> None:
    # the weight transfer: the on-policy row's sync (its engine waits to receive), else each
    # row's fastest sync
    zero = [fmean(r["time/sync"] for r in run.rows) for k, _, run in runs if k == 0]
    rows = [separate_row(k, p, run, zero[0] if zero else min(r["time/sync"] for r in run.rows))
            for k, p, run in runs]
    print("\n" + format_table(rows, {c: c for c in rows[0]}))
    groups: dict[str, list[str]] = {}  # rows that sampled the very same lengths print once
    for k, p, run in runs:
        groups.setdefault(json.dumps(run.lengths), []).append(f"{k}{' partial' if p else ''}")
    lengths = [x for key, labels in groups.items()
               for x in length_rows("k=" + ", ".join(labels), Run([], [], json.loads(key)))]
    if lengths:
        print("\nresponse lengths per step (tokens):\n" + format_table(lengths, {c: c for c in lengths[0]}))
    if args.estimate:
        cfg = load_config(CONFIG, [*DEFAULTS, *LONG_TAIL, *overrides])
        measured = [x for _, _, run in runs for x in run.lengths]
        print(f"\nestimate for {args.estimate} (a model with assumed costs: Costs in "
              "tools/bench_rollout.py):\n" + estimate(
                  args.estimate, measured, (cfg.observer.max_new_tokens, cfg.solver.max_new_tokens),
                  sorted(set(args.staleness))))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--nproc", type=int, nargs="*", default=None,
                        help="colocated world sizes (default 1 2; none with --separate)")
    parser.add_argument("--separate", action="store_true",
                        help="1 learner rank + 1 engine rank, one row per --staleness")
    parser.add_argument("--staleness", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--partial", action="store_true",
                        help=f"also every k >= 1 with {PARTIAL}")
    parser.add_argument("--estimate", metavar="CONFIG",
                        help="carry the measured lengths to a cluster config (a model)")
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        parser.error(f"expected key=value overrides, got {bad}")
    if args.partial:  # the key must exist in this checkout
        load_config(CONFIG, [*DEFAULTS, *SEPARATE, "rollout.max_staleness=1", PARTIAL, *overrides])
    nproc = args.nproc if args.nproc is not None else ([] if args.separate else [1, 2])
    cfg = load_config(CONFIG, [*DEFAULTS, *overrides])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in nproc:
            run = run_world(n, args.steps, overrides, Path(tmp) / f"n{n}", Path(tmp) / "cache")
            rows.append(summary(n, run.rows, cfg))
        runs = separate_runs(args, overrides, Path(tmp)) if args.separate else []
    if rows:
        print(format_table(rows, {k: k for k in rows[0]}))
    if len(rows) > 1:
        base, last = rows[0], rows[-1]
        print(f"\nrollout tokens/s {last['ranks']} engines / {base['ranks']}: "
              f"{float(last['tokens/s']) / float(base['tokens/s']):.2f}x; step time "
              f"{float(base['step s']) / float(last['step s']):.2f}x faster")
    if runs:
        print_separate(runs, args, overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
