"""A rollout engine in a child process of the calling rank, with a torch.distributed world of its
own. The run does not use it: in a torchrun world every rank hosts its engine in-process through
vLLM's `external_launcher` (`rollout.placement`). It lives beside `tools/bench_sync.py`, its one user, which
measures what a push through a process boundary costs (the way to reach an engine that does not
share the learner's world).

`EngineProcess(model_dir, config)` starts a spawned child with the torchrun environment removed,
builds `VllmEngine(model_dir, config)` in it (the child's in-process engine then owns a fresh
torch.distributed world of 1) and forwards the `RolloutEngine` calls through a pipe. Tensors cross
as torch shared-memory handles (torch's multiprocessing reducers), so a weight push is one copy
into shared memory (one buffer per push), not a pickle of the bytes.
"""
from __future__ import annotations

import math
import os
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from prco_mega.rollout.engine import PushStats, RolloutEngine
from prco_mega.rollout.vllm_engine import VllmEngine

_TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                 "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR",
                 "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
                 "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_USE_AGENT_STORE",
                 "TORCHELASTIC_ERROR_FILE", "TORCH_NCCL_ASYNC_ERROR_HANDLING")


def _serve(conn, model_dir: str, config, env: dict[str, str]) -> None:
    """Child main loop: (method, args, kwargs) in, ("ok", result) or ("error", exc, tb) out."""
    for key in _TORCHRUN_ENV:
        os.environ.pop(key, None)
    os.environ.update(env)
    try:
        engine = VllmEngine(model_dir, config)
        conn.send(("ok", {"weight_groups": engine.weight_groups(), "shapes": engine.shapes,
                          "start_seconds": engine.start_seconds}))
    except BaseException as exc:  # report start failures to the parent, then stop
        _send_error(conn, exc)
        return
    while True:
        method, args, kwargs = conn.recv()
        if method == "close":
            engine.close()
            conn.send(("ok", None))
            return
        try:
            if method == "update_weights_packed":
                method, args = "update_weights", (_unpack(*args),)
            conn.send(("ok", getattr(engine, method)(*args, **kwargs)))
        except BaseException as exc:  # the engine stays up; the parent re-raises
            _send_error(conn, exc)


def _send_error(conn, exc: BaseException) -> None:
    try:
        conn.send(("error", exc, traceback.format_exc()))
    except Exception:  # an exception that does not pickle still reaches the parent as text
        conn.send(("error", RuntimeError(repr(exc)), traceback.format_exc()))


def _pack(named: list) -> tuple[list, torch.Tensor]:
    """One shared-memory byte buffer for a whole push: one handle crosses the pipe instead of
    one per tensor (per-tensor handles cost ~1 ms each). meta = [(name, dtype, shape, offset)]."""
    total = sum(t.numel() * t.element_size() for _, t in named)
    flat = torch.empty(total, dtype=torch.uint8).share_memory_()
    meta, offset = [], 0
    for name, t in named:
        n = t.numel() * t.element_size()
        flat[offset:offset + n].copy_(t.detach().reshape(-1).cpu().view(torch.uint8))
        meta.append((name, t.dtype, tuple(t.shape), offset))
        offset += n
    return meta, flat


def _unpack(meta: list, flat) -> list:
    """(name, tensor) views into `flat` (no copy)."""
    out = []
    for name, dtype, shape, offset in meta:
        n = math.prod(shape) * dtype.itemsize
        out.append((name, flat[offset:offset + n].view(dtype).view(shape)))
    return out


class EngineProcess(RolloutEngine):
    """`VllmEngine` in a spawned child process; same interface, plus `call(method, ...)`."""

    def __init__(self, model_dir: str | Path, config=None, env: dict[str, str] | None = None,
                 start_timeout: float = 600.0):
        t0 = time.perf_counter()
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, str(model_dir), config, env or {}),
                                 daemon=True)
        self._proc.start()
        child.close()
        if not self._conn.poll(start_timeout):
            self._proc.kill()
            raise RuntimeError(f"engine process did not start within {start_timeout} s")
        info = self._result(self._conn.recv())
        self.groups: dict[str, list[str]] = info["weight_groups"]
        self.shapes: dict[str, tuple[int, ...]] = info["shapes"]
        self.start_seconds = time.perf_counter() - t0
        """Wall time of the child's start (spawn + imports + engine start)."""

    @staticmethod
    def _result(reply):
        if reply[0] == "ok":
            return reply[1]
        _, exc, tb = reply
        try:
            err = type(exc)(f"{exc}\n--- in the engine process ---\n{tb}")
        except Exception:  # exception types with other constructors
            err = RuntimeError(f"{exc!r}\n--- in the engine process ---\n{tb}")
        raise err from exc

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call `VllmEngine.<method>(*args, **kwargs)` in the child; its exceptions re-raise."""
        if self._proc is None:
            raise RuntimeError("engine process is closed")
        self._conn.send((method, args, kwargs))
        return self._result(self._conn.recv())

    def generate(self, requests, sampling):
        return self.call("generate", list(requests), sampling)

    def update_weights(self, named_tensors: Iterable, *, checked_finite: bool = False) -> PushStats:
        meta, flat = _pack(list(named_tensors))
        return self.call("update_weights_packed", meta, flat, checked_finite=checked_finite)

    def reset_caches(self, zero_kv: bool = False) -> None:
        self.call("reset_caches", zero_kv)

    def weight_groups(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.groups.items()}

    def close(self) -> None:
        if getattr(self, "_proc", None) is None:
            return
        try:
            self.call("close")
        finally:
            self._proc.join(timeout=60)
            if self._proc.is_alive():
                self._proc.kill()
            self._proc = None
