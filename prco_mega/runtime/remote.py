"""Separate placement: the engines sample on their own ranks while the learner trains on its own.

The torchrun world is split at start (`link.split_world`): learner ranks [0, L), engine ranks
[L, W). Per RL step k the two sides meet twice over the links, always in this order on both:

- X(k), `deliver` / `collect`: the engine leaders' parts of step k go to the learner's
  data-parallel replicas. Shapes (a few numbers per trajectory) and the engines' metrics are
  all-gathered over the link; the learner plans the step (its own planner, the one colocated
  runs use) and its first rank broadcasts which replica trains each trajectory; then every
  trajectory, with its images, crosses once, from its engine leader to that replica's ranks.
- W(k+1), `bridge.sync.send_weights` / `receive_weights`: after the learner's update, each
  pipeline stage streams its weights to every engine rank.

`rollout.off_policy_steps` says where the engines sample relative to W:
- 0 (on-policy): W(k), sample k, X(k): the engines wait while the learner trains;
- 1: sample k, W(k), X(k): the engines sample step k with the weights of update k-1 while the
  learner trains update k-1, then take update k's weights (W(k)) and hand step k over. Every
  trajectory records the policy version that drew it (`policy_version`, the number of updates in
  its weights), so the loss knows its lag (`train/policy_lag`) and TIS can correct it.
The order of link operations is the same in both modes (X0, W1, X1, W2, ...), so the two sides
never wait on each other except for data.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from prco_mega.runtime import samplers
from prco_mega.learner.policy import part_shapes, step_order
from prco_mega.dist.link import ROLE_LEARNER, SplitWorld, split_world
from prco_mega.types import Trajectory


@dataclass(frozen=True)
class EngineReport:
    """What an engine leader tells the learner about its part of a step."""

    metrics: dict[str, float]
    weight: float
    """The weight of its metrics when the engines' are combined (`scoring.combine_metrics`)."""
    trajectories: int
    policy_version: int
    """Updates in the weights that drew this part."""
    stream_state: dict | None
    """The task stream's position after the step (every engine walks the same stream): the
    learner saves it with its checkpoint."""


def sampling_version(step: int, off_policy_steps: int) -> int:
    """Updates in the engines' weights when they sample step `step`."""
    if off_policy_steps not in (0, 1):
        raise ValueError(f"rollout.off_policy_steps must be 0 or 1, got {off_policy_steps}")
    return max(0, step - off_policy_steps)


def stamp(part: Sequence[Trajectory], version: int) -> list[Trajectory]:
    """The part with the policy version that drew it."""
    return [dataclasses.replace(t, policy_version=version) for t in part]


def deliver(split: SplitWorld, part: Sequence[Trajectory], report: EngineReport | None,
            learner_dp: list[int | None]) -> None:
    """Engine side of X(k): every engine rank calls it; `part` is its leader's share ([] and
    None on the other ranks of a TP engine). `learner_dp`: `learner_dp_ranks(split, ...)`."""
    gathered = split.link.all_gather((part_shapes(part), report))
    step_id, _ = step_order([shapes for shapes, _ in gathered])
    owner = split.link.broadcast_object(None, src=0)
    if owner is None:  # no engine had a trajectory: nothing to train this step
        split.link.exchange([{} for _ in range(split.link.size)])
        return
    outbox: list[dict[int, Trajectory]] = [{} for _ in range(split.link.size)]
    for j, traj in enumerate(part):
        i = step_id[split.global_rank, j]
        for rank, dp in enumerate(learner_dp):
            if dp is not None and owner[i] == dp:
                outbox[rank][i] = traj
    split.link.exchange(outbox)


def collect(split: SplitWorld, policy: Any) -> tuple[dict[int, Trajectory], Any,
                                                     list[EngineReport]]:
    """Learner side of X(k): (this replica's trajectories by step-wide id, the step's plan, the
    engine leaders' reports). Every learner rank calls it."""
    gathered = split.link.all_gather(([], None))
    step_id, shapes = step_order([shapes for shapes, _ in gathered])
    del step_id  # the engines route by it; the learner keys by the ids they send
    reports = [r for _, r in gathered if r is not None]
    plan = policy.plan(shapes) if shapes else None
    split.link.broadcast_object(None if plan is None else plan.owner(), src=0)
    boxes = split.link.exchange([{} for _ in range(split.link.size)])
    return {i: t for box in boxes for i, t in box.items()}, plan, reports


def learner_dp_ranks(split: SplitWorld, pg_collection: Any | None) -> list[int | None]:
    """The learner data-parallel rank of every global rank (None for engine ranks); collective
    over the link, once per run."""
    return split.link.all_gather(None if pg_collection is None else pg_collection.dp.rank())


# ----------------------------------------------------------------------------- the run
def learner_world_size(cfg) -> int:
    """Learner ranks: `PRCO_LEARNER_WORLD_SIZE` (the launcher exports it), else the cluster
    section's learner GPUs."""
    import os

    if "PRCO_LEARNER_WORLD_SIZE" in os.environ:
        return int(os.environ["PRCO_LEARNER_WORLD_SIZE"])
    return cfg.cluster.world_size


def main(cfg, dirs, algo, resume_run: bool) -> Path | None:
    """`controller.main` under separate placement: the learner ranks train, the engine ranks
    sample and evaluate. Each world's first rank writes what its side owns: the learner's writes
    the config, metrics, checkpoints, curves and report; the engines' the held-out evaluations
    and saved rollouts. Returns the run directory on the learner's first rank."""
    split = split_world(learner_world_size(cfg))
    if split.role == ROLE_LEARNER:
        return _learner_main(cfg, dirs, algo, split, resume_run)
    _engine_main(cfg, dirs, algo, split)
    return None


def _learner_main(cfg, dirs, algo, split: SplitWorld, resume_run: bool) -> Path:
    from prco_mega.runtime import build
    from prco_mega.bridge.sync import cast_dtype, send_weights
    from prco_mega.tracking.metrics import plot_metrics
    from prco_mega.learner.checkpoint import latest_checkpoint
    from prco_mega.learner.policy import NonFiniteLoss
    from prco_mega.algo.credit import combine_metrics
    from prco_mega.tracking.timing import PhaseTimer
    from prco_mega.runtime.warm_start import prepare_model
    from prco_mega.dist.world import is_host

    build.announce(cfg, dirs, algo)
    model = prepare_model(cfg)
    split.link.broadcast_object(str(model), src=0)
    policy = build.make_policy(cfg, model, objective="ppo", settings=build.loss_settings(cfg, algo))
    logger = build.run_loggers(cfg, dirs, algo)
    learner_dp_ranks(split, policy.pg)  # collective: the engines route trajectories by it
    dtype = cast_dtype(cfg.engine.dtype)
    path = latest_checkpoint(dirs.checkpoints) if resume_run else None
    state = policy.load(path) if path is not None else {"step": 0, "data_state": None}
    start = int(state["step"])
    split.link.broadcast_object((start, state["data_state"]), src=0)
    if start:
        send_weights(policy.chunks, policy.pg, policy.hf_config, split, dtype=dtype,
                     engine_tp=cfg.engine.tensor_parallel_size)
        print(f"resumed from {path} at step {start}")
    if is_host():
        logger.start(start)
    before = split.link.broadcast_object(None, src=split.learner_size)  # the engines evaluate
    every, stream_state = cfg.learner.checkpoint.interval, None
    for step in range(start, cfg.run.steps):
        timer = PhaseTimer()
        with timer("wait"):  # the engines' rollout, less what overlapped the last update
            mine, plan, reports = collect(split, policy)
        stream_state = reports[0].stream_state
        metrics = {"step": step, **combine_metrics([(r.metrics, r.weight) for r in reports])}
        learned: dict[str, float] = {"update_successful": 0.0}
        if plan is not None:
            try:
                with timer("learn"):
                    learned = policy.train(mine, plan)
            except NonFiniteLoss as e:
                saved = policy.save(dirs.checkpoints, step, data_state={"stream": stream_state})
                raise SystemExit(f"stopping: {e}; state before the step saved to {saved}") from e
        with timer("sync"):
            synced = send_weights(policy.chunks, policy.pg, policy.hf_config, split, dtype=dtype,
                                  engine_tp=cfg.engine.tensor_parallel_size)
        lag = step - min(r.policy_version for r in reports)
        metrics = {**metrics, **learned, **timer.metrics(), "train/policy_lag": float(lag),
                   "sync/bytes": synced.bytes, "sync/seconds": synced.seconds}
        if is_host():
            logger.log(metrics)
        if (every and (step + 1) % every == 0) or step + 1 == cfg.run.steps:
            policy.save(dirs.checkpoints, step + 1, data_state={"stream": stream_state})
    if is_host():
        logger.close()
    after = split.link.broadcast_object(None, src=split.learner_size)
    if is_host():
        plot_metrics(dirs.metrics, dirs.root / "curves.png")
        build.write_report(dirs.root, cfg, before, after)
    split.link.all_gather(None)  # the engines stay up until the report is written
    return dirs.root


def _engine_main(cfg, dirs, algo, split: SplitWorld) -> None:
    from prco_mega.runtime import build
    from prco_mega.bridge.hf_io import load_hf_config
    from prco_mega.bridge.sync import receive_weights
    from prco_mega.tracking.timing import PhaseTimer
    from prco_mega.tracking.rollouts import RolloutSaver
    from prco_mega.dist.world import is_host

    model = Path(split.link.broadcast_object(None, src=0))
    hf_config = load_hf_config(model)
    shard = build.shard_of(cfg)
    engine = build.start_engine(cfg, model)
    stream = build.task_stream(cfg, cfg.data.prompts_per_step)
    sample = samplers.build_sampler(cfg, algo, engine, build.prompt_set(cfg),
                                      build.leakage_checker(cfg, engine), torch.Generator(), shard)
    samples = RolloutSaver(cfg.saved_rollouts, dirs.root / "rollouts", shard,
                           cfg.data.prompts_per_step)
    # the evaluation reads cfg, engine and shard only: the engines' side of a run has no learner
    run = build.Run(cfg, algo, dirs, None, engine, shard, stream, sample, None, samples)
    dp = learner_dp_ranks(split, None)
    bucket = cfg.engine.sync_bucket_mib * 2**20
    start, data_state = split.link.broadcast_object(None, src=0)
    if start:
        stream.load_state_dict(data_state["stream"])
        receive_weights(engine, hf_config, split, bucket_bytes=bucket)
    if is_host():
        samples.start(start)
    before = build.evaluate_policy(run, dirs.root / "eval_start.json", cache=start > 0)
    split.link.broadcast_object(before, src=split.learner_size)
    off = cfg.rollout.off_policy_steps
    leader = shard.placement.is_engine_leader
    for step in range(start, cfg.run.steps):
        timer = PhaseTimer()
        # a resumed run's first step is drawn by the checkpoint's weights, whatever the lag
        version = step if step == start else sampling_version(step, off)
        if step > start and not off:
            receive_weights(engine, hf_config, split, bucket_bytes=bucket)
        scored = sample(stream, step, timer)
        samples.save(step, scored)
        if step > start and off:
            receive_weights(engine, hf_config, split, bucket_bytes=bucket)
        part = stamp(scored.train, version) if leader else []
        report = (EngineReport({**scored.metrics, **timer.metrics()}, scored.weights, len(part),
                               version, stream.state_dict()) if leader else None)
        deliver(split, part, report, dp)
    if start < cfg.run.steps:  # the last update's weights
        receive_weights(engine, hf_config, split, bucket_bytes=bucket)
    after = build.evaluate_policy(run, dirs.root / "eval_end.json", cache=False)
    split.link.broadcast_object(after, src=split.learner_size)
    split.link.all_gather(None)

