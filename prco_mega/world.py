"""The torch.distributed world of a run: start it, ask a rank's role, move small objects.

Every process-group helper the run's stages share lives here, so no stage reaches into another
for them. The learner's own groups (TP/PP/DP) are built by `learner.parallel` and passed
explicitly; these helpers only use the default (world) group.
"""
from __future__ import annotations

import os
from typing import Any


def ensure_world() -> None:
    """A single process outside torchrun is a world of one (gloo on CPU, NCCL on GPU)."""
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"),
                       ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])


def init_world() -> None:
    """Start torch.distributed before anything else, so rank 0 alone builds cached artifacts while
    the other ranks wait (NCCL with CUDA, gloo without)."""
    import torch
    import torch.distributed as dist

    ensure_world()
    if dist.is_initialized():
        return
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())


def is_host() -> bool:
    """Rank 0 hosts the rollout engine, the data stream and the logs."""
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op outside a distributed world)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def broadcast(obj: Any) -> Any:
    """`obj` from rank 0 on every rank (identity in a world of one)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def device():
    """This rank's compute device: its CUDA device when there is one, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")

