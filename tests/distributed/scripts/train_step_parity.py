"""Two ranks: the PRCO step at TP=2, PP=2 (1F1B), PP=2 x VPP=2 (interleaved) and DP=2 reproduces
the one-rank reference (loss, grad norm, log-probs, weights after one optimizer step).

Usage: torchrun --nproc_per_node 2 train_step_parity.py --ref REF.pt --out OUT.json
"""
from __future__ import annotations

import argparse
import gc
import json

import torch
import torch.distributed as dist

import train_step_common as common
from prco_mega.learner.packing import plan_and_pack
from prco_mega.learner.parallel import destroy_parallel
from prco_mega.learner.loss_paths import LossSettings, TorchPPO
from prco_mega.learner.train_step import compute_logprobs, train_step

SETTINGS = LossSettings(clip_low=0.2, clip_high=0.28)
LAYOUTS = {"tp2": dict(tp=2), "pp2": dict(pp=2), "pp2_vpp2": dict(pp=2, vpp=2), "dp2": dict(),
           # 3 micro-batches: the interleaved schedule needs a multiple of PP, so one loss-free
           # padding micro-batch is added
           "pp2_vpp2_3mb": dict(pp=2, vpp=2, budget=56)}


def run_layout(name: str, ref: dict) -> dict:
    cfg = common.learner_config(**LAYOUTS[name])
    pg, chunks, opt, sched = common.build(cfg)
    mbs = plan_and_pack(common.trajectories(), token_budget=cfg.batching.micro_batch_tokens,
                        dp_size=pg.dp.size(),
                        dp_rank=pg.dp.rank(), encode=common.encode)
    out = {"micro_batches": len(mbs)}
    if len(mbs) == len(ref["logprobs"]):  # the reference's micro-batches: compare log-probs
        lps = compute_logprobs(chunks, mbs, pg=pg, model_forward=common.qwen_forward())
        out["logprob_diff"] = max((a - b).abs().max().item() for a, b in zip(lps, ref["logprobs"]))
    metrics = train_step(chunks, opt, sched, mbs, TorchPPO(SETTINGS, from_forward=False), pg=pg)
    out["loss"], out["loss_diff"] = metrics["loss"], abs(metrics["loss"] - ref["loss"])
    out["grad_norm_diff"] = abs(metrics["grad_norm"] - ref["grad_norm"])
    out["weight_diff"], out["worst_param"] = common.max_weight_diff(common.full_weights(chunks),
                                                                    ref["weights"])
    del chunks, opt, sched
    gc.collect()
    destroy_parallel()
    return out


def main(ref_path: str, out_path: str) -> None:
    ref = torch.load(ref_path, weights_only=False)
    results = {name: run_layout(name, ref) for name in LAYOUTS}
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--ref", required=True)
    parser.add_argument("--out", required=True)
    a = parser.parse_args()
    main(a.ref, a.out)
