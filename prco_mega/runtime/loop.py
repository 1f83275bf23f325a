"""The RL run: one learner loop for every placement. Reads like single-process code.

    restore -> evaluate -> for each step: trajectories in, learn, publish weights, log, save
            -> evaluate -> report

Where trajectories come from and where weights go is the placement's (`placement.Placement`):
`colocated.Colocated` (engines on the learner's ranks) or `remote.Remote` (engines on ranks of
their own, which run `engine_worker` instead of this loop). Every learner rank runs the loop; the
host (rank 0) writes logs and reports. The checkpoint RL starts from comes from the warm-start
stage (`warm_start.prepare_model`), inside the placement's set-up. A cluster's request to stop
(preemption, a time limit ahead) ends the run after the step in flight, saved (`preemption`).
"""
from __future__ import annotations

from pathlib import Path

from prco_mega.config import RunConfig
from prco_mega.dist.link import ROLE_ENGINE, split_world
from prco_mega.dist.world import is_host
from prco_mega.learner.checkpoint import checkpoint_path, latest_checkpoint
from prco_mega.learner.train_step import NonFiniteLoss
from prco_mega.runtime import build
from prco_mega.runtime.colocated import Colocated
from prco_mega.runtime.engine_worker import run_engine_worker
from prco_mega.runtime.placement import Placement
from prco_mega.runtime.preemption import StopVote
from prco_mega.runtime.remote import Remote, learner_world_size
from prco_mega.tracking.metrics import plot_metrics
from prco_mega.tracking.timing import PhaseTimer


def rl_step(place: Placement, step: int) -> dict[str, float]:
    """One PRCO (or baseline) step; returns its metrics (the same on every learner rank)."""
    timer = PhaseTimer()
    got = place.next_step(step, timer)
    metrics = {"step": step, **got.metrics}
    if got.plan is None:  # e.g. dynamic sampling found nothing informative
        return {**metrics, **timer.metrics(), "update_successful": 0.0}
    place.before_learn()
    with timer("learn"):
        learned = place.policy.train(got.mine, got.plan, step=step)
    with timer("sync"):
        synced = place.publish()
    return {**metrics, **learned, **timer.metrics(),
            "train/policy_lag": float(step - got.policy_version), **synced}


def restore(place: Placement, checkpoints: Path, resume_run: bool) -> int:
    """Load the newest complete checkpoint (when resuming); the step to continue from."""
    path = latest_checkpoint(checkpoints) if resume_run else None
    state = place.policy.load(path) if path is not None else {"step": 0, "data_state": None}
    place.restore(int(state["step"]), state["data_state"])
    if path is not None:
        print(f"resumed from {path} at step {state['step']}")
    return int(state["step"])


def train(place: Placement, cfg: RunConfig, dirs: build.RunDirs, start: int,
          stop: StopVote) -> int:
    """Steps `start`.. with their checkpoints; returns the step the run ends before: the run's
    last, or an earlier one when the cluster asked it to stop (that step's state is saved)."""
    every, end = cfg.learner.checkpoint.interval, cfg.run.steps
    for step in range(start, end):
        try:
            metrics = rl_step(place, step)
        except NonFiniteLoss as e:  # the update was refused: this is the last good state
            path = place.policy.save(dirs.checkpoints, step, data_state=place.data_state())
            raise SystemExit(f"stopping: {e}; state before the step saved to {path}") from e
        if is_host():
            place.logger.log(metrics)  # the step's metrics, already combined: no collective
        stopping = step + 1 < end and stop.decide()
        if stopping or (every and (step + 1) % every == 0) or step + 1 == end:
            place.policy.save(dirs.checkpoints, step + 1, data_state=place.data_state())
        if stopping:
            end = step + 1
            break
    if is_host():
        place.logger.close()
    return end


def run(place: Placement, cfg: RunConfig, dirs: build.RunDirs, resume_run: bool,
        stop: StopVote | None = None) -> None:
    """The learner's whole run over `place`; `stop` decides whether a signal ends it early
    (default: a vote over the learner's world with no engine ranks to tell)."""
    stop = stop or StopVote()
    start = restore(place, dirs.checkpoints, resume_run)
    if is_host():  # what an earlier attempt logged at steps >= start is dropped
        place.logger.start(start)
    # The starting policy's scores: measured now, or (resuming) read from the first attempt.
    before = place.evaluate(dirs.root / "eval_start.json", cache=start > 0)
    with stop.armed():
        end = train(place, cfg, dirs, start, stop)
    if end < cfg.run.steps:  # no evaluation, no report: the requeued job writes them
        stop.exit(end, checkpoint_path(dirs.checkpoints, end))
    after = place.evaluate(dirs.root / "eval_end.json", cache=False)
    if is_host():
        plot_metrics(dirs.metrics, dirs.root / "curves.png")
        build.write_report(dirs.root, cfg, before, after)
    place.close()


def check_resume(dirs: build.RunDirs, resume: str) -> bool:
    """Whether the run continues from a checkpoint (`restore`). `resume`: "no" starts it and
    refuses a run directory that has checkpoints (nothing is overwritten by accident); "yes"
    continues it from its newest complete checkpoint, which must exist; "auto" continues it
    if it has one, else starts it (what a requeued Slurm job runs)."""
    if resume not in ("no", "yes", "auto"):
        raise ValueError(f"resume must be one of ['no', 'yes', 'auto'], got {resume!r}")
    if resume == "no" and dirs.checkpoints.exists():
        raise ValueError(f"run directory {str(dirs.root)!r} already has checkpoints: pass "
                         "--resume to continue it, or choose another run.name")
    if resume == "yes" and latest_checkpoint(dirs.checkpoints) is None:
        raise ValueError(f"run directory {str(dirs.root)!r} has no complete checkpoint to "
                         "resume: --resume auto starts a run that has none")
    return resume != "no"


def main(cfg: RunConfig, resume: str = "no") -> Path:
    """Warm start (cached) -> RL -> evaluation table. Returns the run directory."""
    dirs = build.RunDirs(Path(cfg.run.output_dir) / cfg.run.name)
    resume_run = check_resume(dirs, resume)
    algo = build.resolved_algo(cfg)  # a bad preset override is refused before anything starts
    if cfg.cluster is None or cfg.cluster.rollout_placement == "colocated":
        run(Colocated(cfg, dirs, algo), cfg, dirs, resume_run, StopVote())
        return dirs.root
    split = split_world(learner_world_size(cfg))
    if split.role == ROLE_ENGINE:
        run_engine_worker(cfg, dirs, algo, split)
    else:
        # the engine ranks follow the learner's stop decision (not yet with partial rollouts,
        # whose worker serves the link between chunks)
        engines = None if cfg.rollout.partial_rollouts else split.link
        run(Remote(cfg, dirs, algo, split), cfg, dirs, resume_run, StopVote(engines=engines))
    return dirs.root
