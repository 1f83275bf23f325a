"""Distributed checkpoints: model, optimizer, LR schedule, RNG and data position, written
atomically and loadable at a different TP/PP/DP layout.

Layout of a checkpoint root:
    step_00000012/          complete checkpoint (has the `COMPLETE` marker)
        COMPLETE            written last, after every rank finished and every file was fsynced
        meta.json           step, LR schedule, data position, the layout it was saved at
        rng/rank_00000.pt   per-rank RNG states (python, numpy, torch, Megatron's tracker)
        ...                 Megatron `dist_checkpointing` files (model + optimizer shards)
    step_00000013.tmp/      a save in progress or interrupted: never loaded

Atomicity: everything is written into `step_X.tmp/`; after a barrier rank 0 fsyncs the files,
writes `COMPLETE`, and renames the directory to `step_X/` (a rename is atomic on POSIX
filesystems). A crash at any point leaves either no `step_X/` or a complete one.

Resharding: model and optimizer state are saved as Megatron sharded tensors in global
coordinates (the distributed optimizer in its `fully_reshardable` format), so a checkpoint
saved at one TP/PP/DP layout loads at another. RNG states are per rank; they are restored only
when the layout is unchanged (at another layout the ranks' streams have no counterpart).
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

COMPLETE_MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable",
                   "chained_optim_avoid_prefix": True}


def checkpoint_path(root: str | Path, step: int) -> Path:
    """`root/step_XXXXXXXX` for an optimizer step."""
    return Path(root) / f"step_{step:08d}"


def is_complete(path: str | Path) -> bool:
    """True if `path` is a checkpoint whose save finished on every rank."""
    return (Path(path) / COMPLETE_MARKER).is_file()


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest COMPLETE checkpoint under `root` (interrupted `.tmp` saves are skipped)."""
    root = Path(root)
    if not root.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and is_complete(p)]
    return max(steps)[1] if steps else None


def prune_checkpoints(root: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints, and interrupted `.tmp` saves
    older than the newest complete one. Returns the deleted paths. Call on one rank."""
    if keep_last < 1:
        raise ValueError(f"keep_last ({keep_last}) must be >= 1")
    root = Path(root)
    complete = sorted((int(m.group(1)), p) for p in root.iterdir()
                      if (m := _STEP_DIR.match(p.name)) and is_complete(p))
    doomed = [p for _, p in complete[:-keep_last]]
    if complete:
        newest = complete[-1][0]
        doomed += [p for p in root.iterdir() if p.name.endswith(".tmp")
                   and (m := _STEP_DIR.match(p.name[:-4])) and int(m.group(1)) < newest]
    for p in doomed:
        shutil.rmtree(p)
    return doomed


# ----------------------------------------------------------------------------- state pieces
def model_sharded_state_dict(model_chunks: Sequence[torch.nn.Module]) -> dict:
    """Megatron sharded state dict of all chunks; tensors are keyed by global names, so the
    chunk grouping (VPP) does not matter for resharding."""
    from prco_mega.learner.model import unwrap  # imports Megatron at its top

    return {f"chunk{i}": unwrap(c).sharded_state_dict() for i, c in enumerate(model_chunks)}


def rng_state() -> dict[str, Any]:
    """This rank's RNG states: python, numpy, torch CPU (and CUDA), Megatron's tracker."""
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state(), "tracker": get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned (on the same rank of the same layout)."""
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


def _layout(pg: Any) -> dict[str, int]:
    return {"world": dist.get_world_size(), "tp": pg.tp.size(), "pp": pg.pp.size(),
            "dp": pg.dp.size()}


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------- save
def save_checkpoint(
    root: str | Path,
    step: int,
    model_chunks: Sequence[torch.nn.Module],
    optimizer: Any,
    scheduler: Any,
    *,
    pg: Any,
    data_state: dict | None = None,
    keep_last: int | None = None,
) -> Path:
    """Save a checkpoint of optimizer step `step` on every rank (collective); returns its path.

    `data_state` (JSON-serialisable, e.g. the data loader's epoch and position) is returned by
    `load_checkpoint`. An existing `step_X.tmp/` from an interrupted save is replaced; an existing
    complete `step_X/` is an error. With `keep_last`, older checkpoints are then pruned
    (`prune_checkpoints`).
    """
    from megatron.core import dist_checkpointing

    final = checkpoint_path(root, step)
    tmp = final.with_name(final.name + ".tmp")
    if final.exists():
        raise ValueError(f"checkpoint {str(final)!r} already exists")
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)  # empty: Megatron warns of an "old incomplete" checkpoint else
    dist.barrier()
    model_sd = model_sharded_state_dict(model_chunks)
    state = {"model": model_sd,
             "optimizer": optimizer.sharded_state_dict(model_sd, metadata=_OPTIM_METADATA)}
    dist_checkpointing.save(state, str(tmp))
    (tmp / "rng").mkdir(exist_ok=True)
    torch.save(rng_state(), tmp / "rng" / f"rank_{dist.get_rank():05d}.pt")
    _fsync_path(tmp / "rng" / f"rank_{dist.get_rank():05d}.pt")
    if dist.get_rank() == 0:
        meta = {"step": step, "scheduler": scheduler.state_dict(), "data_state": data_state or {},
                "layout": _layout(pg)}
        _write_synced(tmp / "meta.json", json.dumps(meta, indent=1).encode())
    dist.barrier()  # every rank's shards are written and synced
    if dist.get_rank() == 0:
        _finalize(tmp, final)
        if keep_last is not None:
            prune_checkpoints(final.parent, keep_last)
    dist.barrier()
    return final


def _finalize(tmp: Path, final: Path) -> None:
    """Make the save durable, then visible: fsync files and dirs, marker, atomic rename."""
    for dirpath, _, files in os.walk(tmp):
        for name in files:
            _fsync_path(Path(dirpath) / name)
        _fsync_path(Path(dirpath))
    _write_synced(tmp / COMPLETE_MARKER, b"complete\n")
    _fsync_path(tmp)
    os.rename(tmp, final)
    _fsync_path(final.parent)


# ----------------------------------------------------------------------------- load
@contextlib.contextmanager
def _torch_adam_step_kept(optimizer: Any):
    """Work around two megatron-core 0.16 bugs loading `fully_reshardable` state into torch's
    Adam (the optimizer used without Apex / Transformer Engine, i.e. on CPU):
    1. it copies every per-parameter state key from the checkpoint, but torch Adam's `step` lives
       in the per-parameter state and is restored separately, so the copy fails on the missing
       `step`: for the duration of the load each parameter's own restored `step` is passed along;
    2. it restores `step` as ONE tensor shared by every parameter, which torch's Adam then
       increments once per parameter per step (wrong bias correction): each gets its own copy."""
    patched = []
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        original = getattr(opt, "_set_main_param_and_optimizer_states", None)
        if original is None or not hasattr(opt, "model_param_group_index_map"):
            continue

        def set_states(model_param, tensors, opt=opt, original=original):
            group, order = opt.model_param_group_index_map[model_param]
            state = opt.optimizer.state[opt.optimizer.param_groups[group]["params"][order]]
            if "step" in state and "step" not in tensors:
                tensors = {**tensors, "step": state["step"]}
            original(model_param, tensors)

        opt._set_main_param_and_optimizer_states = set_states
        patched.append(opt)
    try:
        yield
    finally:
        for opt in patched:
            del opt._set_main_param_and_optimizer_states
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        for state in getattr(getattr(opt, "optimizer", None), "state", {}).values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()


def _materialize_optimizer_state(optimizer: Any) -> None:
    """Give a fresh optimizer its Adam state (step, moments) so that it can describe the state it
    will load: Megatron's distributed optimizer (0.16, torch Adam) reads the step count while
    building its sharded state dict. One Adam step with zero gradients and lr 0 changes no
    parameter; the loaded values overwrite the state."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if inner is None or inner.state:
            continue
        lrs = [g["lr"] for g in inner.param_groups]
        for g in inner.param_groups:
            g["lr"] = 0.0
            for p in g["params"]:
                p.grad = torch.zeros_like(p)
        inner.step()
        inner.zero_grad(set_to_none=True)
        for g, lr in zip(inner.param_groups, lrs):
            g["lr"] = lr


def load_checkpoint(
    path: str | Path,
    model_chunks: Sequence[torch.nn.Module],
    optimizer: Any | None = None,
    scheduler: Any | None = None,
    *,
    pg: Any,
) -> dict[str, Any]:
    """Load a complete checkpoint into this layout's model chunks (and optimizer, scheduler).

    Returns `{"step", "data_state", "rng_restored", "saved_layout"}`. Raises ValueError for a
    directory without the completion marker (an interrupted or foreign save).
    """
    from prco_mega.learner.model import unwrap  # imports Megatron at its top

    path = Path(path)
    if not is_complete(path):
        raise ValueError(f"checkpoint {str(path)!r} is incomplete: no {COMPLETE_MARKER!r} marker "
                         "(its save was interrupted, or it is not a checkpoint); refusing to load "
                         "it. Use latest_checkpoint() to find the newest complete one.")
    from megatron.core import dist_checkpointing

    meta = json.loads((path / "meta.json").read_text())
    model_sd = model_sharded_state_dict(model_chunks)
    state = {"model": model_sd}
    if optimizer is not None:
        _materialize_optimizer_state(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=True,
                                                          metadata=_OPTIM_METADATA)
    loaded = dist_checkpointing.load(state, str(path))
    for i, chunk in enumerate(model_chunks):
        unwrap(chunk).load_state_dict(loaded["model"][f"chunk{i}"])
    if optimizer is not None:
        with _torch_adam_step_kept(optimizer):
            optimizer.load_state_dict(loaded["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(meta["scheduler"])
    same_layout = meta["layout"] == _layout(pg)
    if same_layout:
        set_rng_state(torch.load(path / "rng" / f"rank_{dist.get_rank():05d}.pt",
                                 weights_only=False))
    return {"step": meta["step"], "data_state": meta["data_state"], "rng_restored": same_layout,
            "saved_layout": meta["layout"]}
