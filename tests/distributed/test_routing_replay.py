"""Routing replay of the Megatron Qwen3-VL-MoE learner (2 ranks, gloo, fp32) at EP=2, TP=2 with
sequence parallel, TP=2 x EP=2 with full activation recompute, and PP=2, through `MegatronPolicy`.
The routing each trajectory carries is transformers' router top-k on the same checkpoint (what an
engine with the learner's weights routes). One torchrun launch (`scripts/routing_replay.py`)."""
import pytest

pytestmark = pytest.mark.distributed

LAYOUTS = ["ep2", "tp2-sp", "tp2-ep2-sp-full", "pp2"]


@pytest.fixture(scope="module")
def replay(torchrun_module):
    return torchrun_module("routing_replay.py", nproc=2, args=["--layouts", ",".join(LAYOUTS)])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_same_weights_route_alike_and_replay_changes_nothing(replay, layout):
    r = replay[layout]
    assert r["agree_same_weights"] == 1.0
    # PP pads micro-batches to one length: padding tokens routed otherwise change GEMM blocking
    assert r["replay_vs_own_max_abs"] < 1e-6
    assert r["grad_norm_rollout"] == pytest.approx(r["grad_norm_plain"], rel=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_learner_replay_records_then_replays_its_own_routing(replay, layout):
    r = replay[layout]
    assert r["agree_learner"] == 1.0
    assert r["grad_norm_learner"] == pytest.approx(r["grad_norm_plain_2"], rel=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_perturbed_router_rollout_replay_dispatches_the_carried_experts(replay, layout):
    r = replay[layout]
    assert 0.3 < r["agree_perturbed"] < 0.9, r["agree_perturbed_layers"]
    assert r["agree_applied"] == 1.0
    assert r["kl_rollout"] < r["kl_none"] / 10, (r["kl_rollout"], r["kl_none"])
    assert set(r["roles"]) == {"moe/observer/text/agree", "moe/solver/text/agree"}


def test_agreement_and_gradients_do_not_depend_on_the_layout(replay):
    base = replay["ep2"]
    for layout in LAYOUTS[1:]:
        r = replay[layout]
        assert r["agree_perturbed_layers"] == base["agree_perturbed_layers"], layout
        # the recompute layout re-runs the routers in the backward: they replay there too
        assert r["grad_norm_perturbed_rollout"] == pytest.approx(
            base["grad_norm_perturbed_rollout"], rel=1e-5), layout
