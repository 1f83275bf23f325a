"""Distributed checkpoints (2 ranks, gloo, fp32): saved at TP=2 after one step, resumed at
TP=1 x DP=2, PP=2 and TP=2, the next step has the same loss and leaves the same weights (the
optimizer's Adam moments and step count came back); the same layout resumes bit for bit with
its RNG streams; the data position comes back; an interrupted save is never loaded.

One launch, ~20 s on 2 shared cores; the marker and pruning rules are also checked without one.
"""
from __future__ import annotations

import pytest

from conftest import run_torchrun

RESUMED = ["tp1_dp2", "pp2", "tp2"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt_root")
    return run_torchrun("ckpt_reshard.py", tmp_path_factory.mktemp("ckpt"), nproc=2,
                        args=["--root", str(root)])


@pytest.mark.distributed
def test_latest_checkpoint_skips_incomplete_saves(ckpt):
    assert ckpt["latest"] == ckpt["saved"]
    assert ckpt["saved"].endswith("step_00000001")


@pytest.mark.distributed
@pytest.mark.parametrize("layout", RESUMED)
def test_incomplete_checkpoints_are_refused(ckpt, layout):
    assert ckpt[layout]["refused"] == [True, True]


@pytest.mark.distributed
@pytest.mark.parametrize("layout", RESUMED)
def test_resume_continues_the_run(ckpt, layout):
    r = ckpt[layout]
    assert r["step"] == 1 and r["sched_steps"] == 2
    assert r["data_state"] == {"epoch": 0, "cursor": 10}
    assert r["loss2_diff"] < 1e-6
    assert r["grad_norm2_diff"] < 1e-4
    assert r["weight2_diff"] < 1e-6, r["worst_param"]  # updates are ~lr = 1e-3


@pytest.mark.distributed
def test_same_layout_resume_is_exact(ckpt):
    r = ckpt["tp2"]
    assert r["rng_restored"] and r["rand_equal"]
    assert r["loss2_diff"] == 0.0 and r["weight2_diff"] == 0.0


@pytest.mark.distributed
def test_rng_is_not_restored_across_layouts(ckpt):
    assert not ckpt["tp1_dp2"]["rng_restored"] and not ckpt["pp2"]["rng_restored"]


# ----------------------------------------------------------------------------- no launch
def _fake(root, name, complete=True):
    d = root / name
    d.mkdir()
    (d / "meta.json").write_text("{}")
    if complete:
        (d / "COMPLETE").write_text("complete\n")
    return d


def test_load_refuses_a_directory_without_the_marker(tmp_path):
    from prco_mega.learner.checkpoint import load_checkpoint

    bad = _fake(tmp_path, "step_00000007", complete=False)
    with pytest.raises(ValueError, match=r"step_00000007.*incomplete.*COMPLETE"):
        load_checkpoint(bad, [], pg=None)


def test_latest_and_prune_only_trust_complete_checkpoints(tmp_path):
    from prco_mega.learner.checkpoint import latest_checkpoint, prune_checkpoints

    assert latest_checkpoint(tmp_path / "missing") is None
    for step in (1, 2, 10):
        _fake(tmp_path, f"step_{step:08d}")
    _fake(tmp_path, "step_00000005.tmp", complete=False)
    _fake(tmp_path, "step_00000011.tmp", complete=False)
    _fake(tmp_path, "step_00000012", complete=False)
    assert latest_checkpoint(tmp_path).name == "step_00000010"  # numeric, not lexical, order
    deleted = prune_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in deleted) == ["step_00000001", "step_00000005.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step_00000002", "step_00000010", "step_00000011.tmp", "step_00000012"]
