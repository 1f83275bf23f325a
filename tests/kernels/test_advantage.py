"""Role-masked group advantages: per (group, role) centring (and std), broadcast under the mask."""
from __future__ import annotations

import pytest
import torch
from _util import algo_or_skip, rel_err

import prco_kernels as pk


def inputs(seed, device, n=150):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 9, (n,), generator=g)  # empty sequences included
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    rewards = torch.rand(n, generator=g)
    groups = torch.randint(0, 12, (n,), generator=g)
    roles = torch.randint(0, 2, (n,), generator=g)
    mask = (torch.rand(int(cu[-1]), generator=g) > 0.2).float()
    return [x.to(device) for x in (rewards, groups, roles, cu, mask)]


@pytest.mark.parametrize("scale_by_std", [False, True])
def test_kernel_matches_reference(scale_by_std, device):
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    args = inputs(seed, device)
    adv, tok = pk.token_advantages(*args, scale_by_std=scale_by_std, impl="triton")
    r_adv, r_tok = pk.token_advantages(*args, scale_by_std=scale_by_std, impl="torch")
    assert rel_err(adv, r_adv) < 1e-5, f"seed {seed}"
    assert rel_err(tok, r_tok) < 1e-5, f"seed {seed}"


def test_hand_computed_groups_and_roles(device):
    # group 0 holds two observers (1, 3) and a solver (5); group 1 one solver (2)
    rewards = torch.tensor([1.0, 3.0, 5.0, 2.0], device=device)
    groups = torch.tensor([0, 0, 0, 1], device=device)
    roles = torch.tensor([0, 0, 1, 1], device=device)
    cu = torch.tensor([0, 2, 3, 5, 6], device=device)
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0], device=device)
    adv, tok = pk.token_advantages(rewards, groups, roles, cu, mask)
    assert torch.allclose(adv.cpu(), torch.tensor([-1.0, 1.0, 0.0, 0.0]))
    assert torch.allclose(tok.cpu(), torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]))
    adv_std, _ = pk.token_advantages(rewards, groups, roles, cu, mask, scale_by_std=True, eps=1e-12)
    # population std of {1, 3} is 1; a lone solver is centred to 0, not 0/0
    assert torch.allclose(adv_std.cpu(), torch.tensor([-1.0, 1.0, 0.0, 0.0]))


def test_bad_offsets_are_rejected(device):
    rewards, groups, roles, cu, mask = inputs(1, device, n=5)
    with pytest.raises(ValueError, match="cu_seqlens"):
        pk.token_advantages(rewards, groups, roles, cu[:-1], mask)


def test_matches_prco_mega_algo_group_advantages():
    algo_adv = algo_or_skip("group_advantages")
    rewards, groups, roles, _, _ = inputs(3, "cpu")
    for scale in (False, True):
        ours = pk.group_advantages(rewards, groups, roles, scale_by_std=scale)
        assert rel_err(algo_adv(rewards, groups, roles, scale_by_std=scale), ours) < 1e-5
