"""Kernel tests run Triton's CPU interpreter unless a GPU is present.

TRITON_INTERPRET is read when a kernel is decorated, and prco_kernels decorates its kernels lazily,
so setting it here (before any prco_kernels kernel module is imported) is early enough even if
another test imported triton first. On a CUDA machine, PRCO_KERNELS_ON_GPU=1 runs the same tests
compiled on the GPU instead.
"""
from __future__ import annotations

import os

import pytest

ON_GPU = os.environ.get("PRCO_KERNELS_ON_GPU", "0") == "1"
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"




@pytest.fixture
def device():
    """Where kernel tests run: the GPU when PRCO_KERNELS_ON_GPU=1, else the CPU interpreter."""
    import torch

    return torch.device("cuda" if ON_GPU else "cpu")
