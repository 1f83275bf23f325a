"""Weight sync from a Megatron learner at TP=2 (2 ranks, gloo, fp32) into two vLLM engines, one
in each rank (`external_launcher`, engine TP=1).

The learner loads the tiny checkpoint and is perturbed; the engines start on the original
checkpoint. After `bridge.colocated.sync_weights` on every rank: each engine's greedy tokens for an
image+text prompt equal Hugging Face transformers' greedy tokens with the learner's weights, its
sampled-token log-probs equal the learner's own TP=2 log-probs within 1e-4, and no rank received
more weight bytes than its engine loads plus one bucket (at TP=2 a rank receives the other half
of the split parameters). A NaN in one rank's shard makes every rank refuse the next sync and
leaves the engines as they were. At PP=2 (each stage receives the other's layers) the greedy tokens
again equal transformers'. One torchrun launch.

A second launch puts ONE engine of TP=2 over the two ranks: each rank fetches only the rows its
engine rank loads (`bridge.slices`), the rows it does not load are NaN in what it pushes, and the
engine still generates transformers' tokens with the learner's log-probs: so the row rules match
vLLM's loaders. Split like the learner, no weight byte crosses the network.
"""
import pytest

pytest.importorskip("vllm")
pytestmark = [pytest.mark.distributed, pytest.mark.vllm]

TOL = 1e-4


@pytest.fixture(scope="module")
def run(torchrun_module):
    return torchrun_module("bridge_sync_tp2.py", nproc=2)


@pytest.fixture(scope="module")
def run_engine_tp2(torchrun_module):
    return torchrun_module("bridge_sync_tp2.py", nproc=2, args=["--engine-tp", "2"])


BUCKET = 96 * 1024


def test_sync_moves_the_perturbed_learner_weights_into_every_engine(run):
    for rank in (0, 1):
        assert run["after"][rank] != run["before"][rank]  # the engines started on other weights
        assert run["stats"][rank]["tensors"] == run["checkpoint_tensors"]
        assert run["stats"][rank]["bytes"] == run["checkpoint_bytes"]


def test_every_engine_generates_what_transformers_generates_with_the_learner_weights(run):
    assert run["prompt_ids_equal_hf"]
    assert len(run["hf"]) > 0
    assert run["after"] == [run["hf"], run["hf"]]


def test_vllm_logprobs_equal_the_learner_tp2_logprobs(run):
    learner = run["learner_logprobs"]
    for vllm in run["vllm_logprobs"]:
        assert len(vllm) == len(learner) == len(run["hf"])
        assert max(abs(a - b) for a, b in zip(vllm, learner)) < TOL
    # the mismatch report computes the same numbers
    vllm = run["vllm_logprobs"][0]
    assert run["mismatch"]["mismatch/max_abs"] == pytest.approx(
        max(abs(a - b) for a, b in zip(vllm, learner)), abs=1e-7)


def test_no_rank_receives_more_than_its_engine_loads_plus_one_bucket(run, run_engine_tp2):
    for launch in (run, run_engine_tp2):
        for layout in ("stats", "pp2_stats"):
            for stats in launch[layout]:
                assert stats["received_bytes"] <= stats["engine_bytes"] + BUCKET, layout
    # engines of TP=1 load the whole model; a learner rank at TP=2 receives the other half of
    # each split parameter, well under the model
    for stats in run["stats"]:
        assert stats["engine_bytes"] == run["checkpoint_bytes"]
        assert 0 < stats["received_bytes"] < 0.75 * run["checkpoint_bytes"]
    # one engine over both ranks: each rank loads about half, and split like the learner it
    # already holds every row it loads
    for stats in run_engine_tp2["stats"]:
        assert stats["engine_bytes"] < 0.6 * run_engine_tp2["checkpoint_bytes"]
        assert stats["received_bytes"] == 0
    # at PP=2 each stage receives the other stage's layers
    assert all(s["received_bytes"] > 0 for s in run_engine_tp2["pp2_stats"])


def test_one_engine_over_two_ranks_loads_only_its_rows_and_matches_the_learner(run_engine_tp2):
    r = run_engine_tp2
    assert r["prompt_ids_equal_hf"]
    assert r["after"] == [r["hf"], r["hf"]] and r["after"] != r["before"]
    for vllm in r["vllm_logprobs"]:
        assert max(abs(a - b) for a, b in zip(vllm, r["learner_logprobs"])) < TOL
    assert r["pp2_after"] == [r["pp2_hf"], r["pp2_hf"]]
    assert all("non-finite" in m for m in r["nan_errors"])


def test_small_buckets_never_split_a_fused_layer(run):
    """96 KiB buckets are smaller than a fused gate/up group (256 KiB): the sync still passes the
    engine's own check that every push carries whole fused layers, with a group going alone when
    it exceeds the bound."""
    for stats in run["stats"]:
        assert stats["buckets"] > 10
        assert stats["largest_bucket_bytes"] == 2 * 256 * 128 * 4  # gate + up of one layer


def test_nan_in_one_shard_is_refused_on_every_rank_before_any_push(run):
    for message in run["nan_errors"]:
        assert "layers.1.self_attention.linear_qkv.weight" in message and "rank 1" in message
        assert "non-finite" in message
    assert run["after_nan"] == run["after"]


def test_pp2_learner_streams_both_stages_into_every_engine(run):
    for rank in (0, 1):
        assert run["pp2_stats"][rank]["tensors"] == run["checkpoint_tensors"]
        assert run["pp2_after"][rank] != run["after"][rank]  # a different learner and policy
        assert run["pp2_after"][rank] == run["pp2_hf"]
