"""One or two ranks: the rollout of two steps of the tiny PRCO (or DAPO) run, sampled by however
many vLLM engines the world holds (colocated: `external_launcher`, `engine.tensor_parallel_size`
consecutive ranks per engine), and the trajectories that enter the loss gathered to rank 0.

Usage: torchrun --nproc_per_node N rollout_sharding.py --cache DIR --engine-tp K --algo A --out OUT
Step 0 is in the caption-first warm-up, step 1 past it (the Solver sees the image). The test runs
it as one engine on one rank, two engines on two ranks and one engine over two ranks, and asserts
that all three draw the same trajectories.
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
    p.add_argument("--engine-tp", type=int, default=1)
    p.add_argument("--algo", default="prco")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    from prco_mega.dist import world
    from prco_mega.dist.routing import part_shapes
    from prco_mega.runtime import build, samplers
    from prco_mega.config import load_config
    from prco_mega.tracking.timing import PhaseTimer
    from prco_mega.runtime.warm_start import base_model

    world.init_world()
    cfg = load_config(ROOT / "configs/tiny_cpu.yaml", [
        f"model.cache_dir={a.cache}", "warm_start.steps=0", "data.prompts_per_step=5",
        "observer.n=3", "solver.n=2", "observer.max_new_tokens=24", "solver.max_new_tokens=16",
        "algo.warmup_steps=1", f"engine.tensor_parallel_size={a.engine_tp}",
        f"algo.name={a.algo}"])
    model = base_model(cfg)
    shard = build.shard_of(cfg)
    engine = build.start_engine(cfg, model)  # every rank, at the same moment
    sampler = samplers.build_sampler(cfg, build.resolved_algo(cfg), engine,
                                     build.prompt_set(cfg), build.leakage_checker(cfg, engine),
                                     torch.Generator(), shard)
    stream = build.task_stream(cfg, cfg.data.prompts_per_step)
    steps = {}
    for step in (0, 1):
        scored = sampler(stream, step, PhaseTimer())
        part = scored.train if shard.placement.is_engine_leader else []
        rows = [{"task": t.task_uid, "role": int(t.role), "group": t.group_id,
                 "response": t.response_ids, "logprobs": t.rollout_logprobs,
                 "reward": t.reward, "advantage": t.advantage, "images": len(t.images),
                 "slot": list(key)}
                for t, (key, _) in zip(part, part_shapes(part))]
        # the learner's step-wide order (`dist.routing`): by (draw, task, place in the slot)
        gathered = sorted((r for rs in shard.gather(rows) for r in rs), key=lambda r: r["slot"])
        steps[step] = {"trajectories": gathered, "stream_position": stream.position}
    if world.rank() == 0:
        Path(a.out).write_text(json.dumps({"engines": shard.placement.num_engines,
                                           "steps": steps}))
    world.barrier()  # no engine.close(): vLLM's shutdown destroys the shared default group


if __name__ == "__main__":
    main()
