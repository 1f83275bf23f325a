"""A step's rollout sharded over vLLM engines draws what one engine draws (issue 18, colocated).

Each launch samples two steps of the tiny run (the caption-first warm-up, then with images) and
gathers the trajectories that enter the loss: one engine on one rank, two engines of TP=1 on two
ranks (each samples its block of the tasks), and one engine of TP=2 over two ranks. Every sample's
seed, group id and the Solver-group draw are keyed by its place in the step, so the three must
agree token for token, with the same rewards and advantages; the engines' log-probs agree within
float tolerance (vLLM batches the blocks differently). DAPO's dynamic sampling, whose refill
decision and batch quota span the engines, is checked the same way at one and two engines.
"""
from __future__ import annotations

import pytest
from conftest import run_torchrun

pytest.importorskip("vllm")
pytestmark = [pytest.mark.distributed, pytest.mark.vllm]

EXACT = ("task", "role", "group", "response", "reward", "advantage", "images")


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")

    def launch(name: str, nproc: int, engine_tp: int, algo: str) -> dict:
        out = tmp_path_factory.mktemp(name)
        return run_torchrun("rollout_sharding.py", out, nproc=nproc,
                            args=["--cache", str(cache), "--engine-tp", str(engine_tp),
                                  "--algo", algo])

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
