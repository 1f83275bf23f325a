"""Choosing between the Triton kernels and their torch references.

Every public op takes `impl="triton" | "torch"`. Asking for "triton" where the kernels cannot run
raises: a silent fallback would hide a 10x slower (or differently rounded) run from the user.
"""
from __future__ import annotations

import os

import torch

IMPLS = ("triton", "torch")


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available(device: torch.device | str) -> bool:
    """Whether the Triton kernels can run on tensors living on `device`.

    CUDA devices need a visible GPU; CPU tensors need the interpreter (TRITON_INTERPRET=1, set
    before triton is first imported).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available()
    return device.type == "cpu" and interpreting()


def check_impl(impl: str, device: torch.device) -> None:
    """Raise unless `impl` is known and, for "triton", runnable on `device`."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "triton" and not available(device):
        raise RuntimeError(
            f"impl='triton' was requested but Triton kernels cannot run on device {device} "
            f"(CUDA needs a GPU; CPU needs TRITON_INTERPRET=1 before triton is imported); "
            f"pass impl='torch' to use the reference"
        )
