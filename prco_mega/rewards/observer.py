"""Role rewards: the Solver's reward, the Observer's utility reward, and the shared-reward ablation.

Notation (docs/algorithm.md): K = G_O captions of one prompt, G = G_S Solver answers per caption,
V in {0, 1} the verifier, F in [0, 1] the format score, leak in {0, 1} the leakage check.
"""
from __future__ import annotations

import math


def solver_reward(verify_score: float, format_score: float, lam: float = 0.9) -> float:
    """r_S = lam * V + (1 - lam) * F."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam ({lam}) must lie in [0, 1]")
    return lam * verify_score + (1.0 - lam) * format_score


def _check_groups(per_caption: list[list[float]], leaks: list[int] | None, name: str) -> None:
    if leaks is not None and len(leaks) != len(per_caption):
        raise ValueError(
            f"leaks ({len(leaks)}) must have one flag per caption ({len(per_caption)})")
    if leaks is not None and any(flag not in (0, 1) for flag in leaks):
        raise ValueError(f"leak flags must be 0 or 1; got {leaks}")
    for k, row in enumerate(per_caption):
        if not row:
            raise ValueError(
                f"{name}[{k}] is empty: every caption needs at least one Solver answer")


def observer_utility_rewards(solver_correct: list[list[float]], leaks: list[int]) -> list[float]:
    """r_O(c_k) = (1 - leak_k) * mean_g V(y_{k,g}, a): the Solver's success rate given caption k.

    solver_correct  # [K][G] verifier scores V of the answers conditioned on each caption
    leaks           # [K] 1 when caption k gives the answer away
    returns         # [K]
    """
    _check_groups(solver_correct, leaks, "solver_correct")
    return [(1 - leak) * math.fsum(row) / len(row) for row, leak in zip(solver_correct, leaks)]


def shared_outcome_observer_rewards(solver_rewards: list[list[float]],
                                    leaks: list[int] | None = None) -> list[float]:
    """Ablation "role rewards shared": r_O(c_k) = mean_g r_S(y_{k,g}) [* (1 - leak_k)].

    The Observer receives the outcome signal its caption produced, the Solver reward r_S
    (verifier and format term) averaged over the caption's G_S answers, instead of its own
    utility reward. By default no leakage term, so the ablation isolates credit assignment to the
    single shared outcome; pass `leaks` to keep the leak penalty and change only V -> r_S.

    solver_rewards  # [K][G] r_S of the answers conditioned on each caption
    leaks           # [K] optional leak flags
    returns         # [K]
    """
    _check_groups(solver_rewards, leaks, "solver_rewards")
    flags = leaks if leaks is not None else [0] * len(solver_rewards)
    return [(1 - leak) * math.fsum(row) / len(row) for row, leak in zip(solver_rewards, flags)]
