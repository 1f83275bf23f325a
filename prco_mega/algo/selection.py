"""Which caption's Solver answers form the Solver group (PRCO's Var > 0 selection).

Among one prompt's `K` captions, those whose `G_S` Solver rewards are not all equal carry a
learning signal; PRCO picks ONE of them uniformly at random. The other Solver samples only score
their caption (the Observer utility reward) and never enter the loss.
"""
from __future__ import annotations

import torch
from torch import Tensor


def has_signal(solver_rewards: Tensor) -> Tensor:
    """[..., K] bool: the caption's `G_S` rewards (last dim) are not all equal (variance > 0).

    Compared as max != min rather than var > 0: exact whatever the reduction order, whereas a
    two-pass float variance of equal rewards can be a tiny positive number (the mean rounds).
    """
    return solver_rewards.amax(dim=-1) != solver_rewards.amin(dim=-1)


def select_solver_groups_batched(solver_rewards: Tensor, generator: torch.Generator) -> Tensor:
    """Pick one caption with reward variance > 0 per prompt, uniformly; -1 where there is none.

    Each prompt draws `K` iid uniform keys; the chosen caption is the argmax of the keys over the
    captions with signal, which is uniform over them. The generator advances by exactly `P * K`
    draws whatever the rewards are, so a run's later random choices do not depend on them.

    solver_rewards  # [P, K, G_S]
    generator       # seeded torch.Generator on solver_rewards' device
    returns         # [P] int64 caption index in [0, K), or -1
    """
    if solver_rewards.dim() != 3:
        raise ValueError(
            f"solver_rewards must be [P, K, G_S]; got shape {tuple(solver_rewards.shape)}"
        )
    num_prompts, num_captions, _ = solver_rewards.shape
    device = solver_rewards.device
    if num_captions == 0:
        return torch.full((num_prompts,), -1, dtype=torch.int64, device=device)
    keys_PK = torch.rand(num_prompts, num_captions, generator=generator, device=device)
    valid_PK = has_signal(solver_rewards)
    # Keys are in [0, 1), so -1 marks invalid captions below every valid one.
    choice_P = torch.where(valid_PK, keys_PK, -1.0).argmax(dim=1)
    return torch.where(valid_PK.any(dim=1), choice_P, -1)


def select_solver_groups(solver_rewards: Tensor, generator: torch.Generator) -> Tensor:
    """Pick one of a prompt's captions with reward variance > 0, uniformly; -1 if there is none.

    solver_rewards  # [K, G_S] Solver rewards of the G_S answers to each of the K captions
    generator       # seeded torch.Generator on solver_rewards' device
    returns         # [] int64 caption index in [0, K), or -1
    """
    if solver_rewards.dim() != 2:
        raise ValueError(f"solver_rewards must be [K, G_S]; got shape {tuple(solver_rewards.shape)}")
    return select_solver_groups_batched(solver_rewards.unsqueeze(0), generator)[0]
