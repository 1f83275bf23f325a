"""Separate placement on two ranks: rank 0 is the learner's world, rank 1 the engines' world
(`dist.link.split_world`). Two RL steps of the tiny PRCO run (the caption-first warm-up, then with
images): the engine samples, routes its part over the link (`dist.routing.Router`), the
learner trains and streams its weights to the engine (`bridge.remote.send_weights` /
`receive_weights`). `--off-policy 1` samples step 1 before update 1's weights arrive. The untrained
tiny model's advantages are all zero, so the learner perturbs its weights after step 0's update:
the engine must sample step 1 with them (on-policy) or without them (off-policy).

Usage: torchrun --nproc_per_node N separate_placement.py --cache DIR --off-policy K
       [--learners L --engine-tp T --family F --ep E --engine-ep] --out OUT
(N = L + engine ranks; the learner is data-parallel over its L ranks.) The learner's first rank
writes the step-0 trajectories the learner trained on, with the learner rank that received each
(rows as `rollout_sharding.py` writes them), both steps' metrics, and every engine rank's sync
statistics.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cache", required=True)
    p.add_argument("--off-policy", type=int, default=0)
    p.add_argument("--learners", type=int, default=1)
    p.add_argument("--engine-tp", type=int, default=1)
    p.add_argument("--family", default="qwen2_5_vl", help="model.family of the tiny model")
    p.add_argument("--ep", type=int, default=1, help="the learner's expert parallel (MoE)")
    p.add_argument("--engine-ep", action="store_true", help="engines with expert parallel (MoE)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    from prco_mega.dist import link, world
    from prco_mega.dist.routing import Router
    from prco_mega.runtime import build, samplers
    from prco_mega.runtime.engine_worker import stamp
    from prco_mega.runtime.placement import EngineReport
    from prco_mega.bridge.remote import receive_weights, send_weights
    from prco_mega.config import load_config
    from prco_mega.tracking.timing import PhaseTimer
    from prco_mega.runtime.warm_start import base_model

    split = link.split_world(a.learners)
    cfg = load_config(ROOT / "configs/tiny_cpu.yaml", [
        f"model.cache_dir={a.cache}", "warm_start.steps=0", "data.prompts_per_step=5",
        "observer.n=3", "solver.n=2", "observer.max_new_tokens=24", "solver.max_new_tokens=16",
        "algo.warmup_steps=1", "cluster.rollout_placement=separate", "cluster.rollout_nodes=1",
        f"rollout.max_staleness={a.off_policy}", f"engine.tensor_parallel_size={a.engine_tp}",
        f"model.family={a.family}", f"learner.parallel.expert_parallel={a.ep}",
        f"engine.enable_expert_parallel={a.engine_ep}"])
    learner = split.role == link.ROLE_LEARNER
    # both worlds' first ranks are "hosts": the learner builds the cached model, the engine waits
    model = Path(split.link.broadcast_object(str(base_model(cfg)) if learner else None, src=0))
    if learner:
        algo = build.resolved_algo(cfg)
        policy = build.make_policy(cfg, model, objective="ppo",
                                   settings=build.loss_settings(cfg, algo))
        router = Router(split.link, policy.pg.dp.rank())
        out = {"steps": {}}
        for step in (0, 1):
            routed = router.route([], plan_step=policy.plan)
            mine, reports = routed.mine, routed.reports
            metrics = policy.train(mine, routed.plan)
            if step == 0:  # the untrained tiny model's advantages are all zero: make update 1 move
                perturb(policy.chunks)
            experts = policy.hf_config.text_config.num_experts if a.engine_ep else 0
            stats = send_weights(policy.chunks, policy.pg, policy.hf_config, split,
                                 engine_tp=a.engine_tp, engine_experts=experts)
            rows = [(i, {"task": t.task_uid, "role": int(t.role), "group": t.group_id,
                         "response": t.response_ids, "logprobs": t.rollout_logprobs,
                         "reward": t.reward, "advantage": t.advantage, "images": len(t.images),
                         "version": t.policy_version, "learner": world.rank()})
                    for i, t in mine.items()]
            rows = [r for _, r in sorted(r for part in world.all_gather(rows) for r in part)]
            out["steps"][str(step)] = {
                "trajectories": rows, "metrics": metrics,
                "versions": [r.policy_version for r in reports],
                "stream": [r.stream_state for r in reports], "sent_bytes": stats.bytes}
        out["engine_sync"] = split.link.broadcast_object(None, src=a.learners)
        out["sent_bytes"] = world.all_gather(stats.bytes)
        if world.is_host():
            Path(a.out).write_text(json.dumps(out))
    else:
        engine = build.start_engine(cfg, model)
        shard = build.shard_of(cfg)
        sampler = samplers.build_sampler(cfg, build.resolved_algo(cfg), engine,
                                         build.prompt_set(cfg), build.leakage_checker(cfg, engine),
                                         torch.Generator(), shard)
        stream = build.task_stream(cfg, cfg.data.prompts_per_step)
        router = Router(split.link, None)
        syncs = []
        for step in (0, 1):
            off = cfg.rollout.max_staleness
            version = max(0, step - off)  # one step ahead at most (the run's order)
            if step and not off:
                syncs.append(receive_weights(engine, engine_config(model), split).__dict__)
            scored = sampler(stream, step, PhaseTimer())
            if step and off:
                syncs.append(receive_weights(engine, engine_config(model), split).__dict__)
            leader = shard.placement.is_engine_leader
            part = stamp(scored.train, version) if leader else []
            report = EngineReport(scored.metrics, scored.weights, version,
                                  stream.state_dict()) if leader else None
            router.route(part, report)
        syncs.append(receive_weights(engine, engine_config(model), split).__dict__)
        split.link.broadcast_object(world.all_gather(syncs), src=a.learners)
    split.link.all_gather(None)  # no engine.close(): vLLM's shutdown destroys the default group


@torch.no_grad()
def perturb(chunks) -> None:
    """Scale every learner weight by (1 + 0.1 N(0, 1)), seeded: a stand-in update."""
    g = torch.Generator().manual_seed(0)
    for chunk in chunks:
        for param in chunk.parameters():
            param.mul_(1 + 0.1 * torch.randn(param.shape, generator=g))


def engine_config(model: Path):
    from prco_mega.bridge.hf_io import load_hf_config

    return load_hf_config(model)


if __name__ == "__main__":
    main()
