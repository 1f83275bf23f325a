"""Wall-clock seconds per named phase, for the step line and the sync report."""
from __future__ import annotations

import time
from contextlib import contextmanager


class PhaseTimer:
    """`with timer("rollout"): ...` adds the block's wall time to `seconds["rollout"]`; a phase
    entered several times (dynamic sampling's draws, the sync's buckets) accumulates."""

    def __init__(self, *phases: str) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(phases, 0.0)

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0

    def metrics(self, prefix: str = "time/") -> dict[str, float]:
        return {f"{prefix}{k}": v for k, v in self.seconds.items()}
