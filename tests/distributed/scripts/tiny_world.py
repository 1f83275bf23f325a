"""Shared start of the torchrun scripts that load the tiny model from a Hugging Face directory:
the `--out` argument, the gloo world, the checkpoint written once by rank 0, and a small text-only
PRCO step."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist


def start() -> tuple[Path, Path]:
    """(JSON result path from `--out`, tiny HF checkpoint dir beside it), every rank past the
    barrier that waits for rank 0 to write the checkpoint."""
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    out = Path(p.parse_args().out)
    dist.init_process_group("gloo")
    return out, shared_checkpoint(out.parent / "tiny")


def shared_checkpoint(out_dir: Path, corpus: int = 2000, **kwargs) -> Path:
    """The tiny checkpoint (`make_tiny_checkpoint` on a `corpus`-sentence demo corpus; kwargs:
    family, init_std, ...) in `out_dir`, written by rank 0 while every rank waits."""
    if dist.get_rank() == 0:
        from prco_mega.tiny.checkpoint import make_tiny_checkpoint
        from prco_mega.tiny.tokenizer import demo_corpus

        make_tiny_checkpoint(out_dir, demo_corpus(corpus), **{"seed": 0, **kwargs})
    dist.barrier()
    return out_dir


def text_trajectories(advantages: list[float], seed: int = 0):
    """One text-only trajectory per advantage, Observer and Solver alternating, two per task
    group, of growing lengths (ids well inside the tiny vocabulary)."""
    from prco_mega.types import Role, Trajectory

    g = torch.Generator().manual_seed(seed)
    return [Trajectory(role=Role(k % 2), task_uid=f"t{k // 2}", group_id=k // 2,
                       prompt_ids=torch.randint(0, 400, (6 + k,), generator=g).tolist(),
                       response_ids=torch.randint(0, 400, (3 + k,), generator=g).tolist(),
                       rollout_logprobs=[-6.0] * (3 + k), advantage=a)
            for k, a in enumerate(advantages)]
