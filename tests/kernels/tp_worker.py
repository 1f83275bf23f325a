"""One rank of the 2-rank vocab-parallel test (run by torchrun from test_vocab_parallel.py).

Each rank holds half of the LM head's rows; it saves what the kernels give it for comparison
with the single-rank reference.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

if os.environ.get("PRCO_KERNELS_ON_GPU", "0") != "1":
    os.environ["TRITON_INTERPRET"] = "1"  # before prco_kernels decorates its kernels
import prco_kernels as pk  # noqa: E402


def main(workdir):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    group = dist.new_group(list(range(world)))
    data = torch.load(os.path.join(workdir, "inputs.pt"))
    out = {}
    for impl in ("triton", "torch"):
        for dtype in (torch.float32, torch.bfloat16):
            shard = data["weight"].shape[0] // world
            hidden = data["hidden"].to(dtype, copy=True).requires_grad_(True)
            weight = data["weight"][rank * shard:(rank + 1) * shard].to(dtype, copy=True)
            weight.requires_grad_(True)
            lp, ent = pk.linear_logprob_entropy(hidden, weight, data["targets"], temperature=0.8,
                                                process_group=group, chunk_tokens=8, impl=impl)
            ((lp * data["g_lp"]).sum() + (ent * data["g_ent"]).sum()).backward()
            out[impl, dtype, "recompute"] = (lp.detach(), ent.detach(), hidden.grad, weight.grad)
            hidden.grad = weight.grad = None
            fn = pk.ppo_kl_loss_fn(data["old"], data["adv"], data["w"], entropy_coef=0.01, impl=impl)
            loss, lp, ent = pk.fused_logprob_loss_head(hidden, weight, data["targets"], fn,
                                                       temperature=0.8, process_group=group,
                                                       chunk_tokens=8, impl=impl)
            loss.backward()
            out[impl, dtype, "loss_head"] = (loss.detach(), lp, hidden.grad, weight.grad)
    torch.save(out, os.path.join(workdir, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
