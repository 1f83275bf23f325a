"""Shared helpers of the kernel tests."""
from __future__ import annotations

import torch

# Relative-error bounds against fp32/fp64 references: fp32 kernels must agree to rounding. bf16:
# the chunked backward keeps its [chunk, V] logits in bf16 (as Liger does), so softmax(z) carries
# ~|z| * 2^-9 absolute error; with |z| up to ~8 in these tests gradients land at 1-3% (measured).
FP32_TOL = 1e-5
BF16_TOL = 5e-2


def rel_err(actual, expected):
    """||actual - expected|| / ||expected|| in float64; NaN anywhere fails loudly."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert torch.isfinite(a).all(), "non-finite values in kernel output"
    return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()


def tol(dtype):
    return FP32_TOL if dtype == torch.float32 else BF16_TOL


def algo_or_skip(name):
    """prco_mega.algo.<name> for cross-checks, or skip (with the reason) while it does not exist."""
    import pytest

    try:
        import prco_mega.algo as algo
    except ImportError as exc:
        pytest.skip(f"prco_mega.algo is not importable yet ({exc}); kernels are checked against "
                    "their own references only")
    if not hasattr(algo, name):
        pytest.skip(f"prco_mega.algo has no {name!r} yet")
    return getattr(algo, name)


def sum_err(actual, expected, magnitude):
    """|actual - expected| / magnitude for a sum whose terms may cancel: `magnitude` is the sum of
    the terms' absolute values, so the bound is the per-term relative error (well conditioned)."""
    return (abs(float(actual) - float(expected)) / max(float(magnitude), 1e-30))


def log_ratios_away_from_clip(n, generator):
    """[n] log(pi/pi_old) in bands clear of the clip edges (log 0.8, log 1.28, log 3 for dual clip).

    PPO's gradient jumps at those edges, so bf16 rounding of a log-prob near one would flip a
    token's gradient between -A*r and 0: a property of clipping, not an error of the kernels.
    """
    bands = torch.tensor([[-0.15, 0.15], [0.40, 0.90], [-0.90, -0.40], [1.30, 1.60]])
    pick = bands[torch.randint(0, len(bands), (n,), generator=generator)]
    return pick[:, 0] + (pick[:, 1] - pick[:, 0]) * torch.rand(n, generator=generator)
