"""2 ranks, learner DP=2: each rank passes its own part of a step (as its engine scored it) to
`dist.routing.Router.route` and gets back what its data-parallel replica trains. Rank 0 writes, per
rank: the step-wide ids the plan gives the rank's replica, the ids it received, and whether each
received trajectory is the one that was sent under that id.

Usage: torchrun --nproc_per_node 2 trajectory_share.py --out OUT.json
"""
from __future__ import annotations

import json

import torch.distributed as dist
from tiny_world import start, text_trajectories


def main() -> None:
    out, hf_dir = start()
    from prco_mega.dist.routing import Router, WorldTransport
    from prco_mega.runtime.build import policy_from_hf
    from prco_mega.types import Slot
    from prco_mega.learner.config import LearnerConfig
    from prco_mega.learner.loss_paths import LossSettings, TorchPPO

    cfg = LearnerConfig(precision="fp32")
    cfg.batching.micro_batch_tokens = 64
    cfg.validate()
    policy = policy_from_hf(hf_dir, cfg, TorchPPO(LossSettings()))
    step = text_trajectories([0.5, -0.5] * 5)  # 10 trajectories, 5 tasks of one group each
    for k, t in enumerate(step):
        t.slot = Slot(0, k // 2)  # (draw, task position), as the rollout sets it
    rank = dist.get_rank()
    part = step[:4] if rank == 0 else step[4:]  # engine 0 scored tasks 0-1, engine 1 tasks 2-4
    routed = Router(WorldTransport(), policy.pg.dp.rank()).route(part, plan_step=policy.plan)
    mine, owner = routed.mine, routed.plan.owner()
    result = {"dp_rank": policy.pg.dp.rank(),
              "planned": sorted(i for i, dp in owner.items() if dp == policy.pg.dp.rank()),
              "received": sorted(mine),
              "same": all(mine[i].response_ids == step[i].response_ids for i in mine),
              "all_ids": sorted(owner)}
    results = [None, None]
    dist.all_gather_object(results, result)
    if rank == 0:
        out.write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
