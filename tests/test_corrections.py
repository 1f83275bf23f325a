"""Off-policy correction presets (`algo.corrections`, `loss_paths.apply_correction`,
`algo.off_policy_correction`): each preset's coefficient on a hand-computed case, the loss a
rewritten batch gives equal to the preset's formula written out here (value and gradient), the
fused Triton path equal to the torch one, decoupled PPO equal to standard PPO bit for bit when
the proximal and behaviour policies agree, and the config's checks.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import prco_kernels
from prco_mega.algo.corrections import (
    correction_weights,
    decoupled_ppo_loss,
    sequence_geometric_ratio,
)
from prco_mega.algo.losses import ppo_clip_loss, prco_loss
from prco_mega.config import AlgoSection, from_dict
from prco_mega.learner.loss_head import FusedPPO, fused_prco_loss
from prco_mega.learner.loss_paths import LossSettings, apply_correction, corrected
from prco_mega.types import Role, TrainBatch

O, S = int(Role.OBSERVER), int(Role.SOLVER)
CLIP = {"clip_low": 0.2, "clip_high": 0.28, "dual_clip": 3.0}
PRESETS = {
    "none": LossSettings(**CLIP),
    "token_tis": LossSettings(**CLIP, correction="token_tis", tis_cap=1.5),
    "seq_mask": LossSettings(**CLIP, correction="seq_mask", correction_band=(0.75, 1.2)),
    "icepop": LossSettings(**CLIP, correction="icepop", correction_band=(0.5, 2.5)),
    "decoupled": LossSettings(**CLIP, correction="decoupled"),
    "decoupled_cap": LossSettings(**CLIP, correction="decoupled", tis_cap=1.5),
}


# ----------------------------------------------------------------- coefficients, by hand
def test_token_coefficients_hand_case():
    behaviour = torch.zeros(5)
    k = torch.tensor([0.4, 0.5, 1.0, 3.0, 10.0])
    prox = k.log()
    mask = torch.ones(5)
    c, hit = correction_weights("token_tis", prox, behaviour, mask, None, cap=2.0)
    torch.testing.assert_close(c, torch.tensor([0.4, 0.5, 1.0, 2.0, 2.0]))
    assert hit.tolist() == [False, False, False, True, True]
    # IcePop keeps the band's ends, weights the kept tokens by k, drops the rest
    c, hit = correction_weights("icepop", prox, behaviour, mask, None, band=(0.5, 3.0))
    torch.testing.assert_close(c, torch.tensor([0.0, 0.5, 1.0, 3.0, 0.0]))
    assert hit.tolist() == [True, False, False, False, True]
    c, hit = correction_weights("decoupled", prox, behaviour, mask, None)
    torch.testing.assert_close(c, k)
    assert not hit.any()
    c, _ = correction_weights("decoupled", prox, behaviour, mask, None, cap=2.0)
    torch.testing.assert_close(c, torch.tensor([0.4, 0.5, 1.0, 2.0, 2.0]))
    c, hit = correction_weights("none", prox, behaviour, mask, None)
    assert torch.equal(c, torch.ones(5)) and not hit.any()


def test_sequence_mask_uses_the_geometric_mean_over_loss_tokens():
    # three sequences: [prompt, 2 loss tokens], [prompt, 3 loss tokens], [prompt, 1 loss token];
    # the prompt positions hold NaN/inf learner log-probs, which must not matter
    cu = torch.tensor([0, 3, 7, 9], dtype=torch.int32)
    mask = torch.tensor([0, 1, 1, 0, 1, 1, 1, 0, 1], dtype=torch.float32)
    log_k = torch.tensor([math.nan, 0.1, 0.3, math.inf, 0.05, -0.05, 0.03, -math.inf, -0.5])
    g = sequence_geometric_ratio(log_k, torch.zeros(9), mask, cu)
    torch.testing.assert_close(g, torch.tensor([math.exp(0.2), math.exp(0.01), math.exp(-0.5)]))
    c, hit = correction_weights("seq_mask", log_k, torch.zeros(9), mask, cu, band=(0.9, 1.2))
    # g = 1.221 (out: above 1.2), 1.010 (in), 0.607 (out: below 0.9): whole sequences
    assert c.tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 0]
    assert hit.tolist() == [True] * 3 + [False] * 4 + [True] * 2


# ----------------------------------------------------------------- rewrite vs formula
def _batch(seed: int = 0) -> tuple[TrainBatch, torch.Tensor, torch.Tensor]:
    """Two roles in four packed sequences with prompt tokens; (batch, prox, logprobs): the
    behaviour log-probs differ from the learner's pre-update ones by up to ~0.5 and the trained
    policy moved away from pi_prox far enough that clip and dual clip branches are taken."""
    g = torch.Generator().manual_seed(seed)
    lengths, roles = [6, 5, 7, 4], [O, S, S, O]
    cu = torch.tensor([0, 6, 11, 18, 22], dtype=torch.int32)
    T = int(cu[-1])
    role_ids = torch.tensor([r for r, n in zip(roles, lengths) for _ in range(n)], dtype=torch.int8)
    mask = torch.ones(T)
    mask[cu[:-1].long()] = 0.0
    mask[cu[:-1].long() + 1] = 0.0  # two prompt tokens per sequence
    adv_N = torch.randn(4, generator=g)
    advantages = torch.repeat_interleave(adv_N, torch.tensor(lengths)) * mask
    prox = -torch.rand(T, generator=g) * 3.0
    behaviour = prox - 1.2 * torch.randn(T, generator=g).clamp(-1.0, 1.0)
    logprobs = prox + 0.4 * torch.randn(T, generator=g)
    batch = TrainBatch(tokens=torch.arange(T), cu_seqlens=cu, role_ids=role_ids, loss_mask=mask,
                       old_logprobs=behaviour, advantages=advantages,
                       role_denominators={Role.OBSERVER: 6.0, Role.SOLVER: 8.0})
    return batch, prox, logprobs


def _formula_coefficients(name, settings, batch, prox):
    """Each preset's coefficient written out from its definition (module doc of
    `algo.corrections`), token by token and sequence by sequence in Python."""
    k = [math.exp(p - b) for p, b in zip(prox.tolist(), batch.old_logprobs.tolist())]
    cap, band = settings.tis_cap, settings.correction_band
    if name == "token_tis":
        return [min(x, cap) for x in k]
    if name.startswith("decoupled"):
        return [x if cap is None else min(x, cap) for x in k]
    if name == "icepop":
        return [x if band[0] <= x <= band[1] else 0.0 for x in k]
    out, cu, mask = [], batch.cu_seqlens.tolist(), batch.loss_mask.tolist()
    for a, b in zip(cu[:-1], cu[1:]):
        logs = [math.log(k[t]) for t in range(a, b) if mask[t]]
        geo = math.exp(sum(logs) / len(logs))
        out += [1.0 if band[0] <= geo <= band[1] else 0.0] * (b - a)
    return out


def _formula_loss(name, settings, batch, prox, logprobs):
    """sum_r sum_{t in r} mask_t c_t L_clip(pi_theta / pi_anchor, A_t) / D_r, anchor = pi_prox
    (mu for none), L_clip written out with its dual clip."""
    anchor = batch.old_logprobs if name == "none" else prox
    c = [1.0] * batch.num_tokens if name == "none" else _formula_coefficients(
        name, settings, batch, prox)
    den = {int(r): d for r, d in batch.role_denominators.items()}
    total = logprobs.new_zeros(())
    for t in range(batch.num_tokens):
        if not batch.loss_mask[t]:
            continue
        a, rho = float(batch.advantages[t]), torch.exp(logprobs[t] - anchor[t])
        clipped = torch.clamp(rho, 1 - CLIP["clip_low"], 1 + CLIP["clip_high"])
        loss_t = torch.maximum(-a * rho, -a * clipped)
        if a < 0:
            loss_t = torch.minimum(loss_t, torch.tensor(-a * CLIP["dual_clip"]))
        total = total + c[t] * loss_t / den[int(batch.role_ids[t])]
    return total


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_rewritten_batch_gives_the_presets_formula(name):
    """apply_correction + prco_loss == the preset's loss written out (value and gradient), with
    every branch of the preset and of the clip taken somewhere in the batch."""
    settings = PRESETS[name]
    batch, prox, logprobs = _batch()
    out, c_T, hit_T = apply_correction(batch, prox, settings)
    lp = logprobs.clone().requires_grad_(True)
    den = {int(r): d for r, d in batch.role_denominators.items()}
    loss, metrics = prco_loss(lp, out.old_logprobs, out.advantages, out.loss_mask, out.role_ids,
                              den, **CLIP)
    (grad,) = torch.autograd.grad(loss, lp)
    lp_ref = logprobs.clone().requires_grad_(True)
    want = _formula_loss(name, settings, batch, prox, lp_ref)
    (grad_ref,) = torch.autograd.grad(want, lp_ref)
    assert loss.item() == pytest.approx(want.item(), abs=1e-6)
    torch.testing.assert_close(grad, grad_ref, atol=1e-6, rtol=1e-5)
    assert sum(metrics[f"{r}/clip_frac"].item() for r in ("observer", "solver")) > 0
    on = batch.loss_mask != 0
    if name in ("token_tis", "seq_mask", "icepop", "decoupled_cap"):  # the preset acted, not everywhere
        assert 0 < int(hit_T[on].sum()) < int(on.sum()), name
    if name in ("seq_mask", "icepop"):
        assert torch.equal(hit_T[on], c_T[on] == 0)


def test_decoupled_ppo_is_standard_ppo_when_the_policies_agree():
    """pi_prox == mu: decoupled PPO's per-token loss, and the loss and gradient of a batch
    rewritten by the decoupled preset (with or without a cap), equal standard PPO's bit for bit."""
    batch, _, logprobs = _batch(1)
    behaviour = batch.old_logprobs
    for dual in (None, 3.0):
        kw = {"clip_low": 0.2, "clip_high": 0.28, "dual_clip": dual}
        ppo, ppo_clipped = ppo_clip_loss(logprobs, behaviour, batch.advantages, **kw)
        for cap in (None, 1.0, 4.0):
            dec, dec_clipped = decoupled_ppo_loss(logprobs, behaviour.clone(), behaviour,
                                                  batch.advantages, cap=cap, **kw)
            assert torch.equal(dec, ppo) and torch.equal(dec_clipped, ppo_clipped)
            assert ppo_clipped.any()
    den = {int(r): d for r, d in batch.role_denominators.items()}

    def loss_and_grad(b):
        lp = logprobs.clone().requires_grad_(True)
        loss, _ = prco_loss(lp, b.old_logprobs, b.advantages, b.loss_mask, b.role_ids, den, **CLIP)
        return loss, torch.autograd.grad(loss, lp)[0]

    want, want_grad = loss_and_grad(batch)
    for cap in (None, 2.0):
        settings = LossSettings(**CLIP, correction="decoupled", tis_cap=cap)
        got, got_grad = loss_and_grad(apply_correction(batch, behaviour.clone(), settings)[0])
        assert torch.equal(got, want) and torch.equal(got_grad, want_grad)


def test_token_tis_keeps_the_tis_cap_numerics_and_equals_capped_decoupled():
    """`tis_cap` alone is token_tis (configs written before the presets train the same), whose
    rewrite is the TIS formula bit for bit; decoupled PPO with the same cap rewrites alike."""
    batch, prox, _ = _batch(2)
    assert LossSettings(tis_cap=1.5).off_policy == "token_tis"
    assert from_dict(AlgoSection, {"tis_cap": 1.5}, "algo").correction() == ("token_tis", 1.5, None)
    out, _, _ = apply_correction(batch, prox, LossSettings(tis_cap=1.5))
    w = torch.exp(prox - batch.old_logprobs).clamp(max=1.5)
    assert torch.equal(out.old_logprobs, prox)
    assert torch.equal(out.advantages,
                       batch.advantages * torch.where(batch.loss_mask != 0, w, torch.ones_like(w)))
    dec, _, _ = apply_correction(batch, prox, LossSettings(correction="decoupled", tis_cap=1.5))
    assert torch.equal(dec.advantages, out.advantages)
    none, _, _ = apply_correction(batch, prox, LossSettings())
    assert none is batch  # standard PPO: the ratio against the rollout's log-probs


def test_correction_statistics_count_what_the_preset_did():
    batch, prox, _ = _batch()
    _, stats = corrected(batch, prox, PRESETS["icepop"])
    _, c_T, hit_T = apply_correction(batch, prox, PRESETS["icepop"])
    on = batch.loss_mask != 0
    assert stats["correction/tokens"].item() == on.sum().item()
    assert stats["correction/masked_sum"].item() == hit_T[on].sum().item()
    solver = on & (batch.role_ids == S)
    assert stats["correction/solver/weight_sum"].item() == pytest.approx(c_T[solver].sum().item())
    assert "mismatch/solver/k3_sum" in stats
    _, stats = corrected(batch, prox, PRESETS["none"])
    assert not any(k.startswith("correction/") for k in stats)


# ----------------------------------------------------------------- fused path
def _fused_case(seed: int = 3):
    """Hidden states and an output layer whose log-probs are the learner's pre-update policy,
    and a batch whose behaviour log-probs differ from them."""
    g = torch.Generator().manual_seed(seed)
    batch, _, _ = _batch(seed)
    T, H, V = batch.num_tokens, 8, 13
    hidden, weight = torch.randn(T, H, generator=g), 0.5 * torch.randn(V, H, generator=g)
    batch = dataclasses.replace(batch, tokens=torch.randint(0, V, (T,), generator=g))
    lp_rows = torch.log_softmax(hidden @ weight.T, -1).gather(
        1, torch.roll(batch.tokens, -1)[:, None])[:, 0]
    starts = torch.zeros(T, dtype=torch.bool)
    starts[batch.cu_seqlens[:-1].long()] = True
    learner = torch.cat([lp_rows.new_zeros(1), lp_rows[:-1]]).masked_fill(starts, 0.0)
    noise = 0.5 * torch.randn(T, generator=g).clamp(-1.0, 1.0)
    return dataclasses.replace(batch, old_logprobs=learner - noise), hidden, weight


@pytest.mark.skipif(not prco_kernels.available("cpu"), reason="needs TRITON_INTERPRET=1")
@pytest.mark.parametrize("name", ["none", "token_tis", "icepop", "decoupled_cap"])
def test_fused_path_applies_token_presets_from_its_own_forward(name):
    """The fused head corrects chunk by chunk from its own log-probs (`from_forward`) and gives
    the torch path's loss, hidden-state gradient and correction statistics."""
    batch, hidden, weight = _fused_case()
    settings = PRESETS[name]
    h = hidden.clone().requires_grad_(True)
    loss, _, metrics = fused_prco_loss(h, weight, batch, settings, from_forward=True)
    (grad,) = torch.autograd.grad(loss, h)
    h_ref = hidden.clone().requires_grad_(True)
    lp_rows = torch.log_softmax(h_ref @ weight.T, -1).gather(
        1, torch.roll(batch.tokens, -1)[:, None])[:, 0]
    lp = torch.cat([lp_rows.new_zeros(1), lp_rows[:-1]])
    out, stats = corrected(batch, lp.detach(), settings)
    den = {int(r): d for r, d in batch.role_denominators.items()}
    want, _ = prco_loss(lp, out.old_logprobs, out.advantages, out.loss_mask, out.role_ids, den,
                        **CLIP)
    (grad_ref,) = torch.autograd.grad(want, h_ref)
    assert loss.item() == pytest.approx(want.item(), abs=1e-5)
    torch.testing.assert_close(grad, grad_ref, atol=1e-5, rtol=1e-4)
    for key, value in stats.items():
        assert metrics[key].item() == pytest.approx(value.item(), abs=1e-5), key


def test_fused_path_refuses_seq_mask_inside_its_chunks():
    batch, hidden, weight = _fused_case()
    assert not FusedPPO(PRESETS["seq_mask"]).corrects_in_forward
    assert FusedPPO(PRESETS["icepop"]).corrects_in_forward
    if not prco_kernels.available("cpu"):
        return
    with pytest.raises(ValueError, match="seq_mask correction needs whole sequences"):
        fused_prco_loss(hidden, weight, batch, PRESETS["seq_mask"], from_forward=True)


# ----------------------------------------------------------------- configuration
@pytest.mark.parametrize("data,needle", [
    ({"tis_cap": 0.0}, r"algo.tis_cap \(0.0\) must be > 0"),
    ({"off_policy_correction": "icepop", "tis_cap": 2.0},
     r"algo.tis_cap \(2.0\) is a parameter of \['decoupled', 'token_tis'\], not of "
     r"off_policy_correction 'icepop'"),
    ({"off_policy_correction": "decoupled", "tis_cap": 0.5}, r"algo.tis_cap \(0.5\) must be >= 1"),
    ({"correction_low": 0.5}, r"correction_low/high \(0.5, None\) are parameters of "
                              r"\['icepop', 'seq_mask'\], not of off_policy_correction 'none'"),
    ({"off_policy_correction": "icepop", "correction_low": 1.2},
     r"algo.correction_low \(1.2\) and correction_high \(5.0\) of icepop must satisfy "
     r"0 < low < 1 < high"),
    ({"off_policy_correction": "seq_mask", "correction_high": 0.99},
     r"correction_low \(0.999\) and correction_high \(0.99\)"),
    ({"off_policy_correction": "is"}, r"algo.off_policy_correction: 'is' is not one of"),
])
def test_config_refuses_parameters_that_do_not_fit_the_preset(data, needle):
    with pytest.raises(ValueError, match=needle):
        from_dict(AlgoSection, data, "algo")


def test_config_fills_preset_defaults():
    def resolved(**data):
        return from_dict(AlgoSection, data, "algo").correction()

    assert resolved() == ("none", None, None)
    assert resolved(off_policy_correction="token_tis") == ("token_tis", 2.0, None)
    assert resolved(off_policy_correction="icepop") == ("icepop", None, (0.5, 5.0))
    assert resolved(off_policy_correction="seq_mask", correction_high=1.01) == (
        "seq_mask", None, (0.999, 1.01))
    assert resolved(off_policy_correction="decoupled") == ("decoupled", None, None)
    assert resolved(off_policy_correction="decoupled", tis_cap=3) == ("decoupled", 3.0, None)


def test_loss_settings_check_their_parameters():
    with pytest.raises(ValueError, match=r"needs a ratio band .* got \(1.1, 2.0\)"):
        LossSettings(correction="icepop", correction_band=(1.1, 2.0))
    with pytest.raises(ValueError, match=r"'token_tis' needs tis_cap"):
        LossSettings(correction="token_tis")
    with pytest.raises(ValueError, match=r"tis_cap \(2.0\) is a parameter of"):
        LossSettings(correction="seq_mask", tis_cap=2.0, correction_band=(0.9, 1.1))
