"""Weight sync from a Megatron Qwen3-VL learner at TP=2 (2 ranks, gloo, fp32) into one vLLM engine
of TP=2 over the same ranks: the mapping table's names are what vLLM's Qwen3-VL loader takes, each
rank fetches only the rows its engine rank loads (`bridge.slices`; split like the learner, nothing
crosses the network), and after the sync the engine generates what transformers generates with
the learner's weights, with the learner's log-probs (within 1e-4). (`--engine-tp 1`, an engine per
rank, passes the same checks.) One torchrun launch (~60 s, mostly the engine's start)."""
import pytest

pytest.importorskip("vllm")
pytestmark = [pytest.mark.distributed, pytest.mark.vllm]

TOL = 1e-4


@pytest.fixture(scope="module")
def run(torchrun_module):
    return torchrun_module("qwen3vl_sync.py", nproc=2, args=["--engine-tp", "2"])


def test_sync_pushes_every_checkpoint_tensor_into_every_engine(run):
    for rank in (0, 1):
        assert run["after"][rank] != run["before"][rank]  # the engines started on other weights
        assert run["stats"][rank]["tensors"] == run["checkpoint_tensors"]
        assert run["stats"][rank]["received_bytes"] == 0


def test_every_engine_generates_what_transformers_generates_with_the_learner_weights(run):
    assert run["prompt_ids_equal_hf"]
    assert len(run["hf"]) > 0
    assert run["after"] == [run["hf"], run["hf"]]


def test_vllm_logprobs_equal_the_learner_tp2_logprobs(run):
    learner = run["learner_logprobs"]
    for vllm in run["vllm_logprobs"]:
        assert len(vllm) == len(learner) == len(run["hf"])
        assert max(abs(a - b) for a, b in zip(vllm, learner)) < TOL
