"""Two ranks: a checkpoint saved at TP=2 resumes at TP=1 (DP=2), at PP=2 and at TP=2 with the
same next-step loss and weights; RNG and data position come back; incomplete checkpoint
directories are skipped by `latest_checkpoint` and refused by `load_checkpoint`.

Usage: torchrun --nproc_per_node 2 ckpt_reshard.py --root CKPT_ROOT --out OUT.json
"""
from __future__ import annotations

import argparse
import gc
import json
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

import train_step_common as common
from prco_mega.learner.checkpoint import (
    COMPLETE_MARKER, latest_checkpoint, load_checkpoint, save_checkpoint)
from prco_mega.learner.packing import plan_and_pack
from prco_mega.learner.parallel import destroy_parallel
from prco_mega.learner.loss_paths import LossSettings, TorchPPO
from prco_mega.learner.train_step import train_step

SETTINGS = LossSettings(clip_low=0.2, clip_high=0.28)


def step(pg, chunks, opt, sched, seed: int) -> dict:
    mbs = plan_and_pack(common.trajectories(seed=seed), token_budget=48, dp_size=pg.dp.size(),
                        dp_rank=pg.dp.rank(), encode=common.encode)
    return train_step(chunks, opt, sched, mbs, TorchPPO(SETTINGS, from_forward=False), pg=pg)


def teardown(*objs) -> None:
    del objs
    gc.collect()
    destroy_parallel()


def save_then_continue(root: Path) -> dict:
    pg, chunks, opt, sched = common.build(common.learner_config(tp=2))
    step(pg, chunks, opt, sched, seed=0)
    path = save_checkpoint(root, 1, chunks, opt, sched, pg=pg,
                           data_state={"epoch": 0, "cursor": 10})
    rand_after_save = torch.rand(3).tolist()
    m2 = step(pg, chunks, opt, sched, seed=1)
    out = {"path": str(path), "rand": rand_after_save, "loss2": m2["loss"],
           "grad_norm2": m2["grad_norm"], "weights2": common.full_weights(chunks)}
    teardown(chunks, opt, sched)
    return out


def make_incomplete(root: Path, complete: Path) -> list[Path]:
    """An interrupted save (`.tmp`, no marker) and a final-named directory without the marker,
    both newer than the complete checkpoint."""
    bad = [root / "step_00000002.tmp", root / "step_00000003"]
    if dist.get_rank() == 0:
        for b in bad:
            shutil.copytree(complete, b)
            (b / COMPLETE_MARKER).unlink()
    dist.barrier()
    return bad


def resume(path: Path, bad: list[Path], first: dict, **layout) -> dict:
    pg, chunks, opt, sched = common.build(common.learner_config(**layout))
    refused = []
    for b in bad:
        try:
            load_checkpoint(b, chunks, opt, sched, pg=pg)
        except ValueError as e:
            refused.append("incomplete" in str(e) and str(b) in str(e))
    info = load_checkpoint(path, chunks, opt, sched, pg=pg)
    rand = torch.rand(3).tolist()
    m2 = step(pg, chunks, opt, sched, seed=1)
    w_diff, w_worst = common.max_weight_diff(common.full_weights(chunks), first["weights2"])
    out = {"refused": refused, "step": info["step"], "data_state": info["data_state"],
           "rng_restored": info["rng_restored"], "rand_equal": rand == first["rand"],
           "sched_steps": sched.num_steps, "loss2_diff": abs(m2["loss"] - first["loss2"]),
           "grad_norm2_diff": abs(m2["grad_norm"] - first["grad_norm2"]),
           "weight2_diff": w_diff, "worst_param": w_worst}
    teardown(chunks, opt, sched)
    return out


def main(root: str, out_path: str) -> None:
    root = Path(root)
    first = save_then_continue(root)
    bad = make_incomplete(root, Path(first["path"]))
    results = {"latest": str(latest_checkpoint(root)), "saved": first["path"],
               "loss2": first["loss2"]}
    for name, layout in {"tp1_dp2": {}, "pp2": {"pp": 2}, "tp2": {"tp": 2}}.items():
        results[name] = resume(Path(first["path"]), bad, first, **layout)
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", required=True)
    a = parser.parse_args()
    main(a.root, a.out)
