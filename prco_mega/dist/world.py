"""The torch.distributed world of a run: start it, ask a rank's role, move small objects.

Every process-group helper the run's stages share lives here, so no stage reaches into another
for them. The learner's own groups (TP/PP/DP) are built by `learner.parallel` and passed
explicitly; these helpers only use the default (world) group.
"""
from __future__ import annotations

import os
import pickle
from typing import Any

import torch
import torch.distributed as dist


def ensure_world() -> None:
    """A single process outside torchrun is rank 0 of a world of one (torchrun's variables, so
    every reader of RANK / WORLD_SIZE / LOCAL_RANK agrees); it needs no address or port."""
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        os.environ.setdefault(key, value)


def init_world() -> None:
    """Start torch.distributed before anything else, so rank 0 alone builds cached artifacts while
    the other ranks wait (NCCL with CUDA, gloo without). A world of one meets in an in-memory
    store: no TCP port is taken, so none can be lost to another job between choosing and binding
    it."""
    ensure_world()
    if dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if int(os.environ["WORLD_SIZE"]) == 1:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    else:
        dist.init_process_group(backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())


def is_host() -> bool:
    """Rank 0 writes the logs, reports and cached artifacts (every rank hosts an engine rank and
    walks the same data stream)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def rank() -> int:
    """This process's rank in the world (0 outside a distributed world)."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """Ranks in the world (1 outside a distributed world)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    """Wait for every rank (no-op outside a distributed world)."""
    if dist.is_initialized():
        dist.barrier()


def broadcast(obj: Any) -> Any:
    """`obj` from rank 0 on every rank (identity in a world of one)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def device() -> torch.device:
    """This rank's compute device: its CUDA device when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def exchange(outbox: list[Any], group: Any = None) -> list[Any]:
    """All-to-all of Python objects: `outbox[d]` goes to rank d of `group` (the world by default);
    returns `inbox[s]`, what rank s sent here. Each object is pickled once and crosses the network
    once, to its destination only (sizes first, then one `all_to_all_single` of bytes); in a world
    of one it is returned as is."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return list(outbox)

    def all_to_all(out, inp, out_splits, in_splits):
        dist.all_to_all_single(out, inp, output_split_sizes=out_splits,
                               input_split_sizes=in_splits, group=group)

    return exchange_objects(outbox, dist.get_world_size(group), all_to_all)


def exchange_objects(outbox: list[Any], size: int, all_to_all) -> list[Any]:
    """`exchange` over any transport: `all_to_all(out, inp, out_splits, in_splits)` moves uint8
    tensors between the `size` members (a registered group's `all_to_all_single`, or a link's)."""
    if len(outbox) != size:
        raise ValueError(f"exchange needs one object per member ({size}), got {len(outbox)}")
    blobs = [pickle.dumps(o, protocol=pickle.HIGHEST_PROTOCOL) for o in outbox]
    send_sizes = torch.tensor([len(b) for b in blobs], dtype=torch.int64)
    recv_sizes = torch.empty(size, dtype=torch.int64)
    all_to_all(recv_sizes, send_sizes, [1] * size, [1] * size)
    joined = b"".join(blobs)
    send = (torch.frombuffer(bytearray(joined), dtype=torch.uint8) if joined
            else torch.empty(0, dtype=torch.uint8))
    recv = torch.empty(int(recv_sizes.sum()), dtype=torch.uint8)
    all_to_all(recv, send, recv_sizes.tolist(), send_sizes.tolist())
    out, offset = [], 0
    for n in recv_sizes.tolist():
        out.append(pickle.loads(recv[offset:offset + n].numpy().tobytes()))
        offset += n
    return out


def all_gather(obj: Any, group: Any = None) -> list[Any]:
    """`obj` of every rank of `group`, in rank order (small metadata only: it is pickled to every
    rank)."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return [obj]
    out = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out
