"""Each rank receives exactly its data-parallel replica's share of a step, once (issue 18):
two ranks each pass the part of the step their engine scored to `dist.routing.Router.route`
(learner DP=2); the plan gives every trajectory one replica, and each rank gets those ids and no others,
each the very trajectory that was sent."""
import pytest

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def shares(torchrun_module):
    return torchrun_module("trajectory_share.py", nproc=2)


def test_each_rank_receives_its_replicas_share_and_nothing_else(shares):
    assert {s["dp_rank"] for s in shares} == {0, 1}
    for s in shares:
        assert s["received"] == s["planned"] and s["received"]
        assert s["same"]
        assert s["all_ids"] == list(range(10))
    assert set(shares[0]["received"]).isdisjoint(shares[1]["received"])
    assert sorted(shares[0]["received"] + shares[1]["received"]) == list(range(10))
