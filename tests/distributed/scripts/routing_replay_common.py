"""Helpers of the routing-replay scripts (`routing_replay.py`, `routing_replay_engine.py`):
perturbing the learner's routers, and what Megatron's dispatcher received under replay."""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist


def perturb_routers(policy, scale: float) -> None:
    """Every router weight moves by `scale` x its std (the same noise on every rank that holds
    the layer: seeded by the layer)."""
    from megatron.core.transformer.moe.router import TopKRouter

    for chunk in policy.chunks:
        for m in chunk.modules():
            if isinstance(m, TopKRouter):
                g = torch.Generator().manual_seed(m.layer_number)
                w = m.weight.data
                w += scale * w.std() * torch.randn(w.shape, generator=g, dtype=w.dtype)


@contextlib.contextmanager
def applied_routing(policy):
    """Within: every router's dispatch (the `routing_map` Megatron's dispatcher receives) and the
    replay target it had, per forward."""
    from megatron.core.transformer.moe.router import TopKRouter

    seen: list = []

    def hook(module, inputs, output):
        target = module.router_replay.target
        if target is not None:
            seen.append((output[1].detach().clone(), target.clone()))

    handles = [m.register_forward_hook(hook) for c in policy.chunks for m in c.modules()
               if isinstance(m, TopKRouter)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def applied_agreement(seen) -> float:
    """Fraction of routed tokens, over the world, whose dispatched experts are the target's."""
    agree = total = 0
    for routing_map, target in seen:
        chosen = torch.zeros_like(routing_map)
        chosen.scatter_(1, target.long(), True)
        agree += int((chosen == routing_map).all(dim=1).sum())
        total += routing_map.shape[0]
    t = torch.tensor([float(agree), float(total)])
    dist.all_reduce(t)
    return float(t[0] / t[1])
