"""The RL loop: generate, score, learn, sync. Reads like single-process code; every rank runs it.

Rank 0 hosts the rollout engine, the data stream and the logs; the trajectories it scores are
broadcast to the other ranks, which then take the learner step and the weight sync with it.
"""
from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from prco_mega import components as C
from prco_mega.config import RunConfig, to_dict


class Timer:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        yield
        self.seconds[f"time/{phase}"] = time.perf_counter() - t0


def broadcast(obj: Any) -> Any:
    """`obj` from rank 0 on every rank (identity in a world of one)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@dataclasses.dataclass
class Run:
    cfg: RunConfig
    dirs: C.RunDirs
    policy: Any
    engine: Any
    stream: Any
    rollout: Any
    credit: Any
    generator: torch.Generator
    logger: Any


def rl_step(run: Run, step: int) -> dict[str, float]:
    """One PRCO (or baseline) step; returns its metrics."""
    timer, seed = Timer(), C.step_seed(run.cfg.run.seed, step)
    scored = None
    if C.is_host():
        with timer("rollout"):
            rollouts = run.rollout(run.stream.next_batch(), step, policy_version=step)
        run.generator.manual_seed(seed)
        with timer("score"):
            scored = run.credit(rollouts)
    scored = broadcast(scored)
    with timer("mismatch"):
        mismatch = run.policy.mismatch(scored.train)
    with timer("learn"):
        learned = run.policy.step(scored.train)
    with timer("sync"):
        synced = run.policy.sync_to(run.engine)
    return {"step": step, **scored.metrics, **mismatch, **learned, **timer.seconds,
            "sync/bytes": synced.bytes, "sync/seconds": synced.seconds}


def save(run: Run, step: int) -> Path:
    state = {"stream": run.stream.state_dict() if C.is_host() else None}
    return run.policy.save(run.dirs.checkpoints, step, data_state=broadcast(state))


def resume(run: Run) -> int:
    """Load the newest complete checkpoint; returns the step to continue from (0 if none)."""
    from prco_mega.learner.checkpoint import latest_checkpoint

    path = latest_checkpoint(run.dirs.checkpoints)
    if path is None:
        return 0
    state = run.policy.load(path)
    if C.is_host():
        run.stream.load_state_dict(state["data_state"]["stream"])
        run.logger.truncate_after(state["step"] - 1)
    run.policy.sync_to(run.engine)
    print(f"resumed from {path} at step {state['step']}")
    return int(state["step"])


def train(run: Run, start: int) -> None:
    from prco_mega.eval.report import step_line
    from prco_mega.learner.policy import NonFiniteLoss

    every = run.cfg.learner.checkpoint.interval
    progress = _progress(start, run.cfg.run.steps)
    for step in range(start, run.cfg.run.steps):
        try:
            metrics = rl_step(run, step)
        except NonFiniteLoss as e:
            path = save(run, step)  # the update was refused: this is the last good state
            raise SystemExit(f"stopping: {e}; state before the step saved to {path}") from e
        if C.is_host():
            run.logger.log(metrics)
            progress.write(step_line(step, metrics))
            progress.update(1)
        if (every and (step + 1) % every == 0) or step + 1 == run.cfg.run.steps:
            save(run, step + 1)
    progress.close()


def _progress(start: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="PRCO steps", disable=not C.is_host(),
                dynamic_ncols=True)


def main(cfg: RunConfig, resume_run: bool = False) -> Path:
    """Warm start (cached) -> RL -> evaluation table. Returns the run directory."""
    from prco_mega.eval.report import MetricsLogger, plot_metrics
    from prco_mega.assemble import build_run, evaluate_policy, prepare_model, write_report

    C.init_world()
    dirs = C.RunDirs(Path(cfg.run.output_dir) / cfg.run.name)
    if dirs.root.exists() and not resume_run and (dirs.checkpoints.exists()):
        raise ValueError(f"run directory {str(dirs.root)!r} already has checkpoints: pass "
                         "--resume to continue it, or choose another run.name")
    dirs.root.mkdir(parents=True, exist_ok=True)
    model_dir = prepare_model(cfg)
    run = build_run(cfg, dirs, model_dir, MetricsLogger(dirs.metrics))
    start = resume(run) if resume_run else 0
    if start == 0 and C.is_host():
        run.logger.reset()  # lines of an attempt that died before its first checkpoint
    # The starting policy's scores: measured now, or (resuming) read from the first attempt.
    before = evaluate_policy(run, dirs.root / "eval_start.json", cache=start > 0)
    train(run, start)
    after = evaluate_policy(run, dirs.root / "eval_end.json", cache=False)
    if C.is_host():
        plot_metrics(dirs.metrics, dirs.root / "curves.png")
        write_report(dirs.root, cfg, before, after)
        (dirs.root / "config.json").write_text(__import__("json").dumps(to_dict(cfg), indent=1))
    return dirs.root
