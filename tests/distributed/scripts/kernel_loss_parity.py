"""Two ranks: the learner's loss and gradients with the fused Triton loss head (impl="triton",
Triton's CPU interpreter) equal the torch path's (logits + prco_loss) at TP=1 (DP=2), TP=2 and
PP=2 (1F1B), on the tiny Qwen2.5-VL with images, fp32; then one `train_step` with TIS on the
Triton path.

Usage: torchrun --nproc_per_node 2 kernel_loss_parity.py --out OUT.json
"""
from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton / prco_kernels are imported

import argparse
import dataclasses
import gc
import json

import torch
import torch.distributed as dist
import train_step_common as common

from prco_mega.learner.loss_head import FusedPPO
from prco_mega.learner.loss_paths import LossSettings, TorchPPO, apply_tis
from prco_mega.learner.packing import plan_and_pack
from prco_mega.learner.parallel import destroy_parallel
from prco_mega.learner.train_step import (
    compute_logprobs,
    make_forward_step,
    reduce_metrics,
    run_schedule,
    train_step,
)

# Two settings cover every branch of the loss: token level with dual clip, k3 KL to a reference
# and a temperature; sequence level with TIS-rewritten batches (learner old log-probs, weights).
VARIANTS = {
    "token_kl": LossSettings(clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_coef=0.05,
                             kl_kind="k3", level="token", temperature=0.7),
    "sequence_tis": LossSettings(clip_low=0.2, clip_high=0.2, level="sequence"),
}
LAYOUTS = {"tp1": {"tp": 1}, "tp2": {"tp": 2}, "pp2": {"pp": 2}}
TIS_CAP = 1.5


def grads_and_loss(chunks, mbs, path, pg):
    """Gradients of one step's loss (no optimizer step; DP-reduced) and the step's metrics."""
    for c in chunks:
        c.zero_grad_buffer()
    step = make_forward_step(path.forward, path.loss)
    store = run_schedule(chunks, mbs, step, forward_only=False)
    grads = {n: p.main_grad.detach().clone() for c in chunks for n, p in c.named_parameters()}
    # shares with global denominators: the step's sum, sent from the last pipeline stage
    return grads, reduce_metrics(store, pp_group=pg.pp, dp_group=pg.dp)


def variant_batches(mbs, name):
    g = torch.Generator().manual_seed(7)
    out = []
    for b in mbs:
        noise = 0.3 * torch.randn(b.num_tokens, generator=g)
        if name == "token_kl":
            out.append(dataclasses.replace(b, ref_logprobs=b.old_logprobs + noise))
        else:
            out.append(apply_tis(b, b.old_logprobs + noise, TIS_CAP))
    return out


def compare(chunks, mbs, settings, pg) -> dict:
    g_torch, m_torch = grads_and_loss(chunks, mbs, TorchPPO(settings, from_forward=False), pg)
    g_triton, m_triton = grads_and_loss(chunks, mbs, FusedPPO(settings, from_forward=False), pg)
    diff = torch.tensor([max((g_torch[k] - g_triton[k]).abs().max().item() for k in g_torch),
                         max(g.abs().max().item() for g in g_torch.values())])
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    worst = max(g_torch, key=lambda k: (g_torch[k] - g_triton[k]).abs().max().item())
    return {"loss_torch": m_torch["loss"], "loss_triton": m_triton["loss"],
            "metrics_torch": m_torch, "metrics_triton": m_triton,
            "grad_max_diff": diff[0].item(), "grad_max_abs": diff[1].item(), "worst": worst}


def tis_train_step(chunks, opt, sched, mbs, pg) -> dict:
    """train_step on the fused path with TIS taken from its own forward (`from_forward`): the
    learner's old log-probs are the step's, so every ratio is 1 and each role's loss is
    -sum_t w_t A_t mask_t / D_role with w = min(exp(learner_old - rollout), cap): computed here
    from `compute_logprobs` (torch). The same forward's mismatch statistics are returned too."""
    path = FusedPPO(LossSettings(clip_low=0.2, clip_high=0.2, tis_cap=TIS_CAP))
    lps = compute_logprobs(chunks, mbs, pg=pg, model_forward=common.qwen_forward())
    want, raw_max = 0.0, 0.0
    for b, lp in zip(mbs, lps):
        raw = torch.exp(lp - b.old_logprobs)[b.loss_mask != 0]
        raw_max = max(raw_max, float(raw.max()))
        w = torch.exp(lp - b.old_logprobs).clamp(max=TIS_CAP)
        for role, d in b.role_denominators.items():
            sel = (b.role_ids == int(role)) & (b.loss_mask != 0)
            want += -float((w * b.advantages)[sel].sum()) / d
    want_t, raw_t = torch.tensor([want]), torch.tensor([raw_max])
    dist.all_reduce(want_t, group=pg.dp)
    dist.all_reduce(raw_t, op=dist.ReduceOp.MAX)
    from prco_mega.learner.mismatch import finish_mismatch

    mismatch = sum(float(((lp - b.old_logprobs).abs() * (b.loss_mask != 0)).sum())
                   for b, lp in zip(mbs, lps))
    mismatch_t = torch.tensor([mismatch])
    dist.all_reduce(mismatch_t, group=pg.dp)
    metrics = finish_mismatch(train_step(chunks, opt, sched, mbs, path, pg=pg))
    clipped = sum(v for k, v in metrics.items() if k.endswith("/clipped_tokens"))
    return {"loss": metrics["loss"], "want": want_t.item(), "clipped_tokens": clipped,
            "max_raw_weight": raw_t.item(), "update_successful": metrics["update_successful"],
            "mismatch_abs_sum": mismatch_t.item(),
            "mismatch_mean_abs": metrics["mismatch/mean_abs"] * metrics["mismatch/tokens"]}


def run_layout(name: str) -> dict:
    cfg = common.learner_config(**LAYOUTS[name])
    pg, chunks, opt, sched = common.build(cfg)
    out = {}
    for vname, settings in VARIANTS.items():
        mbs = plan_and_pack(common.trajectories(), token_budget=cfg.batching.micro_batch_tokens,
                            dp_size=pg.dp.size(), dp_rank=pg.dp.rank(), encode=common.encode,
                            level=settings.level)
        out[vname] = compare(chunks, variant_batches(mbs, vname), settings, pg)
        out[vname]["micro_batches"] = len(mbs)
    mbs = plan_and_pack(common.trajectories(), token_budget=cfg.batching.micro_batch_tokens,
                        dp_size=pg.dp.size(), dp_rank=pg.dp.rank(), encode=common.encode)
    out["tis_train_step"] = tis_train_step(chunks, opt, sched, mbs, pg)
    del chunks, opt, sched
    gc.collect()
    destroy_parallel()
    return out


def main(out_path: str) -> None:
    results = {name: run_layout(name) for name in LAYOUTS}
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    main(parser.parse_args().out)
