"""A step's rollout sharded over vLLM engines draws what one engine draws (issue 18, colocated).

Each launch samples two steps of the tiny run (the caption-first warm-up, then with images) and
gathers the trajectories that enter the loss: one engine on one rank, two engines of TP=1 on two
ranks (each samples its block of the tasks), and one engine of TP=2 over two ranks. Every sample's
seed, group id and the Solver-group draw are keyed by its place in the step, so the three must
agree token for token, with the same rewards and advantages; the engines' log-probs agree within
float tolerance (vLLM batches the blocks differently). DAPO's dynamic sampling, whose refill
decision and batch quota span the engines, is checked the same way at one and two engines.
Separate placement (a learner world and an engine world, `link.split_world`) draws the same step,
on-policy and one step off-policy.
"""
from __future__ import annotations

import pytest
from conftest import run_torchrun

pytest.importorskip("vllm")
pytestmark = [pytest.mark.distributed, pytest.mark.vllm]

EXACT = ("task", "role", "group", "response", "reward", "advantage", "images")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def launches(tmp_path_factory, cache):
    done: dict[str, dict] = {}

    def launch(name: str, nproc: int, engine_tp: int, algo: str) -> dict:
        if name not in done:  # a launch several tests compare against runs once
            done[name] = run_torchrun("rollout_sharding.py", tmp_path_factory.mktemp(name),
                                      nproc=nproc, args=["--cache", str(cache), "--engine-tp",
                                                         str(engine_tp), "--algo", algo])
        return done[name]

    return launch


@pytest.fixture(scope="module")
def separate(tmp_path_factory, cache):
    def launch(off_policy: int, learners: int = 1, engine_tp: int = 1, *extra: str) -> dict:
        return run_torchrun("separate_placement.py", tmp_path_factory.mktemp(f"sep{off_policy}"),
                            nproc=learners + engine_tp,
                            args=["--cache", str(cache), "--off-policy", str(off_policy),
                                  "--learners", str(learners), "--engine-tp", str(engine_tp),
                                  *extra])

    return launch


def _same_trajectories(a: dict, b: dict) -> None:
    for step in ("0", "1"):
        ta, tb = a["steps"][step]["trajectories"], b["steps"][step]["trajectories"]
        assert len(ta) == len(tb) > 0, step
        for x, y in zip(ta, tb):
            assert {k: x[k] for k in EXACT} == {k: y[k] for k in EXACT}, step
            assert max(abs(u - v) for u, v in zip(x["logprobs"], y["logprobs"])) < 1e-5
        assert a["steps"][step]["stream_position"] == b["steps"][step]["stream_position"]


def test_two_engines_draw_what_one_engine_draws(launches):
    one = launches("prco1", 1, 1, "prco")
    two = launches("prco2", 2, 1, "prco")
    assert (one["engines"], two["engines"]) == (1, 2)
    _same_trajectories(one, two)
    assert {t["images"] for t in one["steps"]["1"]["trajectories"]} == {1}  # past the warm-up
    tp2 = launches("prco_tp2", 2, 2, "prco")
    assert tp2["engines"] == 1
    _same_trajectories(one, tp2)


def test_dapo_refill_over_two_engines_keeps_what_one_engine_keeps(launches):
    one = launches("dapo1", 1, 1, "dapo")
    two = launches("dapo2", 2, 1, "dapo")
    _same_trajectories(one, two)


def test_separate_placement_learner_and_engine_worlds(launches, separate):
    """Learner ranks and engine ranks in worlds of their own (`dist.link.split_world`). On-policy, 4
    ranks: a learner of DP=2 on ranks 0-1 and one engine of TP=2 on ranks 2-3; one-step
    off-policy, 2 ranks: one learner rank, one engine rank. The engines draw step 0 exactly as one
    engine in a world of one does; each learner replica trains on its share of what crossed the
    link; after the learner's (perturbed) update the weights reach the engine ranks, each
    receiving exactly the rows it loads, and the engine's log-probs of step 1 equal the
    learner's (fp32); off-policy, step 1 is drawn by the old weights, and every trajectory says
    so."""
    one = launches("prco1", 1, 1, "prco")
    on, off = separate(0, learners=2, engine_tp=2), separate(1)
    for run in (on, off):
        got = run["steps"]["0"]["trajectories"]
        want = one["steps"]["0"]["trajectories"]
        assert len(got) == len(want) > 0
        for x, y in zip(got, want):
            assert {k: x[k] for k in EXACT} == {k: y[k] for k in EXACT}
            assert max(abs(u - v) for u, v in zip(x["logprobs"], y["logprobs"])) < 1e-5
        assert run["steps"]["0"]["metrics"]["mismatch/max_abs"] < 1e-4
    # both learner replicas trained, each on its own share
    assert {t["learner"] for t in on["steps"]["0"]["trajectories"]} == {0, 1}
    # on-policy: step 1 was drawn by the synced (perturbed) weights, version 1
    assert on["steps"]["1"]["metrics"]["mismatch/max_abs"] < 1e-4
    assert {t["version"] for t in on["steps"]["1"]["trajectories"]} == {1}
    # off-policy: drawn by version 0 while the learner trained update 1
    assert off["steps"]["1"]["metrics"]["mismatch/max_abs"] > 1e-2
    assert {t["version"] for t in off["steps"]["1"]["trajectories"]} == {0}
    assert off["steps"]["1"]["versions"] == [0] and on["steps"]["1"]["versions"] == [1]
    # every engine rank receives exactly the rows it loads: all of them at engine TP=1, about
    # half at TP=2; only the stage's sender (learner rank 0) sends
    (whole,) = {s["engine_bytes"] for s in off["engine_sync"][0]}
    for run in (on, off):
        for rank in run["engine_sync"]:
            assert len(rank) == 2  # update 1 and update 2
            assert all(s["received_bytes"] == s["engine_bytes"] for s in rank)
    assert off["sent_bytes"] == [whole]
    assert all(s["engine_bytes"] < 0.6 * whole for rank in on["engine_sync"] for s in rank)
    assert on["sent_bytes"][1] == 0


def test_separate_placement_streams_a_moe_learners_experts_from_its_whole_ep_group(separate):
    """The tiny Qwen3-VL-MoE, separate placement, on-policy, 4 ranks: a learner of DP=2 with
    expert parallel 2 (each rank holds half of every layer's experts) and one engine of TP=2 with
    expert parallel (each engine rank holds 4 of the 8 experts of every layer, whole). The stage's
    sender (learner rank 0) gets the other learner rank's experts over the EP group and streams
    each engine rank its TP rows of the dense weights and only its own experts; after the
    perturbed update the engine's log-probs of step 1 equal the learner's (fp32), so every expert
    arrived where it is held."""
    run = separate(0, 2, 2, "--family", "qwen3_vl_moe", "--ep", "2", "--engine-ep")
    assert {t["learner"] for t in run["steps"]["0"]["trajectories"]} == {0, 1}
    for step in ("0", "1"):
        assert run["steps"][step]["metrics"]["mismatch/max_abs"] < 1e-4, step
    assert {t["version"] for t in run["steps"]["1"]["trajectories"]} == {1}
    assert len(run["engine_sync"]) == 2
    for rank in run["engine_sync"]:
        assert all(s["received_bytes"] == s["engine_bytes"] > 0 for s in rank)
    # the sender sent each engine rank its part only: together one model, each about half
    received = [rank[0]["received_bytes"] for rank in run["engine_sync"]]
    assert sum(received) == run["sent_bytes"][0] and max(received) < 0.6 * sum(received)
    assert run["sent_bytes"][1] == 0
