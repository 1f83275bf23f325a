"""Rollout with 1 and 2 engines on this machine: tokens/s, per-rank sync bytes and seconds, and
the step-time breakdown, measured on the real loop.

    .venv/bin/python tools/bench_rollout.py [--steps 4] [--nproc 1 2] [key=value ...]
    .venv/bin/prco-mega bench rollout [same arguments]

For each world size N it runs `prco-mega train configs/tiny_cpu.yaml` under
`torchrun --nproc_per_node N` (colocated: N engines of TP=1, the learner at DP=N) for a few RL
steps on the same tasks and seeds (warm start off by default: the random tiny model writes
captions and answers up to their token limits, a steady sampling load), then prints one row per
world size from its `metrics.jsonl`: sampled response tokens per rollout second, seconds per
phase, and the bytes each sync pushed into an engine and received over the network (max and
mean over ranks). The first step (engine and kernel warm-up) is left out of the means. On 2 busy
cores the rollout can at best double; the step's other phases do not shrink as much.

`--separate` adds two rows for separate placement on 2 ranks (1 learner rank, 1 engine rank,
`link.split_world`): on-policy, and one-step off-policy (`rollout.max_staleness=1`), where the
engine samples the next step while the learner trains. There a step's wall time is the learner's
wait for the engine's part plus its update and sync (`time/wait` + `time/learn` + `time/sync`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import fmean

from prco_mega.config import load_config
from prco_mega.eval.report import format_table

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny_cpu.yaml"
DEFAULTS = ["warm_start.steps=0", "run.eval_tasks=2", "learner.checkpoint.interval=0"]


SEPARATE = ["cluster.rollout_placement=separate", "cluster.rollout_nodes=1", "cluster.nodes=1",
            "cluster.gpus_per_node=1"]


def run_world(nproc: int, steps: int, overrides: list[str], out: Path,
              env_extra: dict[str, str] | None = None) -> list[dict]:
    """The metrics rows of a `steps`-step run in a world of `nproc` ranks."""
    args = ["train", str(CONFIG), *DEFAULTS, f"run.steps={steps}", f"run.output_dir={out}",
            f"model.cache_dir={out / 'cache'}", f"run.name=n{nproc}", *overrides]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(nproc), "-m", "prco_mega.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, 2 // nproc)),
           "VLLM_LOGGING_LEVEL": "ERROR", "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return [json.loads(line) for line in (out / f"n{nproc}" / "metrics.jsonl").read_text().splitlines()]


def separate_summary(off_policy: int, rows: list[dict]) -> dict:
    """A row for separate placement (1 learner rank + 1 engine rank)."""
    steady = rows[1:] or rows
    phases = {p: fmean(r.get(f"time/{p}", 0.0) for r in steady)
              for p in ("rollout", "score", "wait", "learn", "sync")}
    return {"placement": f"separate, off-policy {off_policy}",
            **{f"{p} s": f"{v:.2f}" for p, v in phases.items()},
            "step s": f"{phases['wait'] + phases['learn'] + phases['sync']:.2f}",
            "policy lag": f"{fmean(r['train/policy_lag'] for r in steady):.1f}"}


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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--separate", action="store_true",
                        help="also 1 learner rank + 1 engine rank, on- and off-policy")
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        parser.error(f"expected key=value overrides, got {bad}")
    cfg = load_config(CONFIG, [*DEFAULTS, *overrides])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.nproc:
            rows.append(summary(n, run_world(n, args.steps, overrides, Path(tmp) / f"n{n}"), cfg))
        separate = [separate_summary(off, run_world(
            2, args.steps, [*SEPARATE, f"rollout.max_staleness={off}", *overrides],
            Path(tmp) / f"sep{off}", {"PRCO_LEARNER_WORLD_SIZE": "1"}))
            for off in ((0, 1) if args.separate else ())]
    print(format_table(rows, {k: k for k in rows[0]}))
    if len(rows) > 1:
        base, last = rows[0], rows[-1]
        print(f"\nrollout tokens/s {last['ranks']} engines / {base['ranks']}: "
              f"{float(last['tokens/s']) / float(base['tokens/s']):.2f}x; step time "
              f"{float(base['step s']) / float(last['step s']):.2f}x faster")
    if separate:
        print("\n" + format_table(separate, {k: k for k in separate[0]}))
        on, off = (float(r["step s"]) for r in separate)
        print(f"\none-step off-policy: step time {on / off:.2f}x faster than on-policy")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
