"""The RL loop: sample, learn, sync. Reads like single-process code; every rank runs it.

Every rank hosts one rank of a rollout engine and samples its engine's block of the step; the
engines' metrics are combined, each trajectory goes once to the data-parallel replica that trains
it, and every rank receives the weights its engine loads. Colocated engines sleep while the
learner trains and wake for the sync (weights first, then the KV cache). Rank 0 writes the logs.
The parts come from the build layer (`build.build_run`); the checkpoint RL starts from comes from
the warm-start stage (`warm_start.prepare_model`). This is colocated placement; under
`cluster.rollout_placement: separate` the learner's and the engines' ranks run the two halves of
the loop in `separate.main` instead.
"""
from __future__ import annotations

from pathlib import Path

from prco_mega.runtime import build
from prco_mega.config import RunConfig
from prco_mega.algo.credit import combine_metrics
from prco_mega.tracking.timing import PhaseTimer
from prco_mega.dist.world import all_gather, broadcast, init_world, is_host


def sync(run: build.Run):
    """Learner -> bridge -> engine: the weights this rank's engine loads (collective). The engine
    wakes its weights first and its KV cache after the push (vLLM's order)."""
    from prco_mega.bridge.sync import cast_dtype, sync_weights

    p, e = run.policy, run.cfg.engine
    run.engine.wake_up(["weights"])
    stats = sync_weights(p.chunks, p.pg, p.hf_config, run.engine,
                         bucket_bytes=e.sync_bucket_mib * 2**20, dtype=cast_dtype(e.dtype))
    run.engine.wake_up(["kv_cache"])
    return stats


def rl_step(run: build.Run, step: int) -> dict[str, float]:
    """One PRCO (or baseline) step; returns its metrics (the same on every rank)."""
    timer = PhaseTimer()
    scored = run.sample(run.stream, step, timer)
    run.samples.save(step, scored)  # on its steps: sampled tasks from every engine, for rank 0
    # a TP engine's ranks drew the same samples: its leader's part is the engine's
    part = scored.train if run.shard.placement.is_engine_leader else []
    engines = run.shard.gather((scored.metrics, scored.weights, len(part),
                                min((t.policy_version for t in part), default=step)))
    metrics = {"step": step, **combine_metrics([(m, w) for m, w, _, _ in engines])}
    if not sum(n for _, _, n, _ in engines):  # e.g. dynamic sampling found nothing informative
        return {**metrics, **timer.metrics(), "update_successful": 0.0}
    run.engine.sleep(run.cfg.engine.sleep_level)
    with timer("learn"):
        learned = run.policy.step(part, part_of_step=True)
    with timer("sync"):
        synced = sync(run)
    lag = step - min(v for _, _, _, v in engines)
    received = all_gather(synced.received_bytes)  # what crossed the network, per rank
    return {**metrics, **learned, **timer.metrics(), "train/policy_lag": float(lag),
            "sync/bytes": synced.bytes, "sync/seconds": synced.seconds,
            "sync/received_bytes_max": float(max(received)),
            "sync/received_bytes_mean": sum(received) / len(received)}


def save(run: build.Run, step: int) -> Path:
    # every rank walks the same stream; rank 0's position is everyone's
    state = {"stream": run.stream.state_dict() if is_host() else None}
    return run.policy.save(run.dirs.checkpoints, step, data_state=broadcast(state))


def resume(run: build.Run) -> int:
    """Load the newest complete checkpoint; returns the step to continue from (0 if none)."""
    from prco_mega.learner.checkpoint import latest_checkpoint

    path = latest_checkpoint(run.dirs.checkpoints)
    if path is None:
        return 0
    state = run.policy.load(path)
    run.stream.load_state_dict(state["data_state"]["stream"])
    sync(run)
    print(f"resumed from {path} at step {state['step']}")
    return int(state["step"])


def train(run: build.Run, start: int) -> None:
    from prco_mega.learner.policy import NonFiniteLoss

    every = run.cfg.learner.checkpoint.interval
    for step in range(start, run.cfg.run.steps):
        try:
            metrics = rl_step(run, step)
        except NonFiniteLoss as e:
            path = save(run, step)  # the update was refused: this is the last good state
            raise SystemExit(f"stopping: {e}; state before the step saved to {path}") from e
        if is_host():
            run.logger.log(metrics)  # the step's metrics, already combined: no collective
        if (every and (step + 1) % every == 0) or step + 1 == run.cfg.run.steps:
            save(run, step + 1)
    if is_host():
        run.logger.close()


def main(cfg: RunConfig, resume_run: bool = False) -> Path:
    """Warm start (cached) -> RL -> evaluation table. Returns the run directory."""
    from prco_mega.tracking.metrics import plot_metrics
    from prco_mega.runtime.warm_start import prepare_model

    dirs = build.RunDirs(Path(cfg.run.output_dir) / cfg.run.name)
    if dirs.root.exists() and not resume_run and (dirs.checkpoints.exists()):
        raise ValueError(f"run directory {str(dirs.root)!r} already has checkpoints: pass "
                         "--resume to continue it, or choose another run.name")
    algo = build.resolved_algo(cfg)  # a bad preset override is refused before anything starts
    if cfg.cluster is not None and cfg.cluster.rollout_placement == "separate":
        from prco_mega.runtime import remote as separate  # learner ranks and engine ranks run their own loops

        separate.main(cfg, dirs, algo, resume_run)
        return dirs.root
    init_world()
    build.announce(cfg, dirs, algo)
    run = build.build_run(cfg, dirs, prepare_model(cfg), build.run_loggers(cfg, dirs, algo))
    start = resume(run) if resume_run else 0
    if is_host():  # what an earlier attempt logged or saved at steps >= start is dropped
        run.logger.start(start)
        run.samples.start(start)
    # The starting policy's scores: measured now, or (resuming) read from the first attempt.
    before = build.evaluate_policy(run, dirs.root / "eval_start.json", cache=start > 0)
    train(run, start)
    after = build.evaluate_policy(run, dirs.root / "eval_end.json", cache=False)
    if is_host():
        plot_metrics(dirs.metrics, dirs.root / "curves.png")
        build.write_report(dirs.root, cfg, before, after)
    return dirs.root
