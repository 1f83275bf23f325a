"""Weight sync from a Megatron learner at TP=2 (2 ranks, gloo, fp32) into a vLLM engine on rank 0.

The learner loads the tiny checkpoint and is perturbed; the engine starts on the original
checkpoint. After `bridge.sync.sync_weights`: vLLM's greedy tokens for an image+text prompt equal
Hugging Face transformers' greedy tokens with the learner's weights, and vLLM's sampled-token
log-probs equal the learner's own TP=2 log-probs within 1e-4. A NaN in one rank's shard makes
every rank refuse the next sync and leaves the engine as it was. At PP=2 (stage 1 streams its
layers to rank 0) the greedy tokens again equal transformers'. One torchrun launch (~25-40 s on
2 cores; the engine runs in a child process of rank 0, see `bridge.sync`'s docstring).
"""
import pytest

pytest.importorskip("vllm")
pytestmark = [pytest.mark.distributed, pytest.mark.vllm]

TOL = 1e-4


@pytest.fixture(scope="module")
def run(torchrun_module):
    return torchrun_module("bridge_sync_tp2.py", nproc=2)


def test_sync_moves_the_perturbed_learner_weights_into_the_engine(run):
    assert run["after"] != run["before"]  # the engine started on different weights
    assert run["stats"]["tensors"] == run["checkpoint_tensors"]
    assert run["stats"]["bytes"] == run["checkpoint_bytes"]


def test_vllm_greedy_equals_transformers_with_the_learner_weights(run):
    assert run["prompt_ids_equal_hf"]
    assert len(run["after"]) > 0
    assert run["after"] == run["hf"]


def test_vllm_logprobs_equal_the_learner_tp2_logprobs(run):
    vllm, learner = run["vllm_logprobs"], run["learner_logprobs"]
    assert len(vllm) == len(learner) == len(run["after"])
    assert max(abs(a - b) for a, b in zip(vllm, learner)) < TOL
    # the mismatch report computes the same numbers
    assert run["mismatch"]["mismatch/max_abs"] == pytest.approx(
        max(abs(a - b) for a, b in zip(vllm, learner)), abs=1e-7)


def test_small_buckets_never_split_a_fused_layer(run):
    """96 KiB buckets are smaller than a fused gate/up group (256 KiB): the sync still passes the
    engine's own check that every push carries whole fused layers, with a group going alone when
    it exceeds the bound."""
    stats = run["stats"]
    assert stats["buckets"] > 10
    assert stats["largest_bucket_bytes"] == 2 * 256 * 128 * 4  # gate + up of one layer, alone


def test_nan_in_one_shard_is_refused_on_every_rank_before_any_push(run):
    for message in run["nan_errors"]:
        assert "layers.1.self_attention.linear_qkv.weight" in message and "rank 1" in message
        assert "non-finite" in message
    assert run["after_nan"] == run["after"]


def test_pp2_learner_streams_both_stages_into_the_engine(run):
    assert run["pp2_stats"]["tensors"] == run["checkpoint_tensors"]
    assert run["pp2_after"] != run["after"]  # a different learner, a different policy
    assert run["pp2_after"] == run["pp2_hf"]
