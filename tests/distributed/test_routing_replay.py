"""Routing replay of the Megatron Qwen3-VL-MoE learner (2 ranks, gloo, fp32), through
`MegatronPolicy`:
- with vLLM as the engine (an engine per rank, the learner at EP=2): the engine's captured routing
  of sampled image and text prompts is the learner's own on the same weights (100%); with the
  learner's routers perturbed, rollout replay dispatches the engine's experts for every token and
  lowers the mismatch KL of the sampled tokens against the engine's log-probs;
- at EP=2, TP=2 with sequence parallel, TP=2 x EP=2 with full activation recompute, and PP=2,
  with transformers' router top-k as the carried routing: replay of the same routing changes no
  log-prob or gradient; R2 replays what it recorded; perturbed routers are overridden.
One torchrun launch (`scripts/routing_replay.py --engine`)."""
import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.vllm]

LAYOUTS = ["ep2", "tp2-sp", "tp2-ep2-sp-full", "pp2"]


@pytest.fixture(scope="module")
def replay(torchrun_module):
    return torchrun_module("routing_replay.py", nproc=2, args=["--layouts", ",".join(LAYOUTS), "--engine"])


def test_engine_routing_is_the_learners_own_on_the_same_weights(replay):
    r = replay["engine"]
    assert r["samples"] == 12 and r["image_positions"] > 0
    same = r["same_weights"]
    assert same["agree"]["moe/agree"] == 1.0, same["agree"]
    assert {"moe/observer/image/agree", "moe/solver/text/agree"} <= set(same["agree"])
    assert same["kl_none"] < 1e-9 and same["kl_rollout"] < 1e-9


def test_engine_routing_replayed_after_the_router_moved(replay):
    moved = replay["engine"]["perturbed"]
    assert moved["agree"]["moe/agree"] < 0.9
    assert moved["agree_applied"] == 1.0
    assert moved["kl_rollout"] < moved["kl_none"], moved


@pytest.mark.parametrize("layout", LAYOUTS)
def test_same_weights_route_alike_and_replay_changes_nothing(replay, layout):
    r = replay[layout]
    assert r["agree_same_weights"] == 1.0
    # PP pads micro-batches to one length: padding tokens routed otherwise change GEMM blocking
    assert r["replay_vs_own_max_abs"] < 1e-6
    assert r["grad_norm_rollout"] == pytest.approx(r["grad_norm_plain"], rel=1e-6)
    assert "carry no engine routing" in r["missing_routing_error"]


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
