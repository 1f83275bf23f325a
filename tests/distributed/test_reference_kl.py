"""The KL-to-reference term end to end in the learner (`algo.kl_coef > 0`): the reference is the
starting checkpoint in the learner's TP=2 layout, it stays frozen while the policy trains, and a
step whose only term is the KL moves the policy back towards it (one 2-rank launch, ~40 s)."""
from __future__ import annotations

import pytest
from conftest import run_torchrun


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return run_torchrun("reference_kl.py", tmp_path_factory.mktemp("reference_kl"), nproc=2,
                        timeout=300)


def test_reference_starts_as_the_policy_and_stays_frozen_while_it_trains(result):
    assert result["tokens"] > 20
    assert result["start_max_abs"] < 1e-5
    assert result["ref_drift_max_abs"] == 0.0
    assert result["policy_drift_max_abs"] > 1e-2


def test_a_kl_only_step_pulls_the_policy_back_towards_the_reference(result):
    assert result["kl_before"] > 1e-4
    assert result["kl_after"] < 0.9 * result["kl_before"]
    # The step reports the KL it saw, per role, and it is the one measured before the step
    # (token-level means per role, so their token-weighted blend is not checked exactly).
    reported = result["reported_kl"]
    assert set(reported) == {"observer/kl", "solver/kl"}
    assert all(0 < v for v in reported.values())
    assert min(reported.values()) <= result["kl_before"] * 1.001
    assert max(reported.values()) >= result["kl_before"] * 0.999


def test_a_kl_step_without_a_reference_is_refused_by_name(result):
    assert "reference=True" in (result["missing_reference_error"] or "")
