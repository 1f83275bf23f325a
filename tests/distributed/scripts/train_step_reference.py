"""One rank (TP=PP=DP=1): the reference PRCO step that the parallel layouts must reproduce, plus
the single-layout properties (micro-batching, loss scaling, log-prob recompute).

Usage: torchrun --nproc_per_node 1 train_step_reference.py --ref REF.pt --out OUT.json
Writes the reference loss, log-probs and weights after one step to REF.pt and the measured
properties to OUT.json (tests/distributed/test_train_step.py asserts them).
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import torch

import train_step_common as common
from prco_mega.algo.losses import prco_loss
from prco_mega.learner.packing import pack_trajectories, plan_and_pack, step_denominators
from prco_mega.learner.loss_paths import LossSettings, TorchPPO
from prco_mega.learner.train_step import compute_logprobs, make_forward_step, run_schedule, train_step

SETTINGS = LossSettings(clip_low=0.2, clip_high=0.28)
PATH = TorchPPO(SETTINGS, from_forward=False)


def grads_and_loss(chunks, mbs):
    """Accumulated gradients of one step (no optimizer step) and the step loss."""
    for c in chunks:
        c.zero_grad_buffer()
    step = make_forward_step(common.qwen_forward(), PATH.loss)
    store = run_schedule(chunks, mbs, step, forward_only=False)
    grads = {n: p.main_grad.detach().clone() for c in chunks for n, p in c.named_parameters()}
    return grads, sum(float(m["loss"]) for m in store)


def recompute_checks(chunks, mbs, den, pg) -> dict:
    """With old log-probs recomputed by the learner the ratio is 1: nothing is clipped and each
    role's pg loss is -sum(A * mask) / D_role."""
    lps = compute_logprobs(chunks, mbs, pg=pg, model_forward=common.qwen_forward())
    fresh = [dataclasses.replace(b, old_logprobs=lp) for b, lp in zip(mbs, lps)]
    step = make_forward_step(common.qwen_forward(), PATH.loss)
    store = run_schedule(chunks, fresh, step, forward_only=True)
    out = {}
    for role, d in den.items():
        name = "observer" if role == 0 else "solver"
        out[name] = {
            "want": -sum(float((b.advantages * b.loss_mask)[b.role_ids == role].sum())
                         for b in mbs) / d,
            "got": sum(float(m[f"{name}/pg_loss"]) for m in store),
            "clip_frac": sum(float(m[f"{name}/clip_frac"]) for m in store),
            "ratio_mean": sum(float(m[f"{name}/ratio_mean"]) for m in store),
        }
    return out, lps


def main(ref_path: str, out_path: str) -> None:
    cfg = common.learner_config()
    pg, chunks, opt, sched = common.build(cfg)
    trajs = common.trajectories()
    den = step_denominators(trajs)
    whole = pack_trajectories(trajs, den, encode=common.encode)
    mbs = plan_and_pack(trajs, token_budget=48, dp_size=1, dp_rank=0, encode=common.encode)

    # The step loss computed outside Megatron's schedule, on the whole step at once.
    (lp_whole,) = compute_logprobs(chunks, [whole], pg=pg, model_forward=common.qwen_forward())
    direct, _ = prco_loss(lp_whole, whole.old_logprobs, whole.advantages, whole.loss_mask,
                          whole.role_ids, den, clip_low=0.2, clip_high=0.28)
    g_one, loss_one = grads_and_loss(chunks, [whole])
    g_many, loss_many = grads_and_loss(chunks, mbs)
    recompute, lps = recompute_checks(chunks, mbs, den, pg)
    metrics = train_step(chunks, opt, sched, mbs, PATH, pg=pg)
    torch.save({"loss": metrics["loss"], "grad_norm": metrics["grad_norm"], "logprobs": lps,
                "weights": common.full_weights(chunks)}, ref_path)
    result = {
        "micro_batches": len(mbs), "loss_direct": direct.item(), "loss_one_mb": loss_one,
        "loss_many_mb": loss_many, "train_step_loss": metrics["loss"],
        "grad_max_diff": max((g_one[k] - g_many[k]).abs().max().item() for k in g_one),
        "grad_max_abs": max(g.abs().max().item() for g in g_one.values()),
        "recompute": recompute, "metrics": metrics,
    }
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--ref", required=True)
    parser.add_argument("--out", required=True)
    a = parser.parse_args()
    main(a.ref, a.out)
