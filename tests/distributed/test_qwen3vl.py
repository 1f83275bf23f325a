"""The Megatron Qwen3-VL (2 ranks, gloo, fp32) computes the same per-token log-probs as the Hugging
Face model with the same weights, within 1e-5, at TP=1, TP=2, TP=2 with sequence parallelism and
PP=2, for a right-padded batch and the same sequences packed (two images in one sequence, one of
them 3 x 5 merged tokens; one image in another; a text-only sequence) and for a text-only
micro-batch; its weight gradients equal HF's (also with full activation recompute, which re-runs
the deepstack layers); HF -> Megatron -> HF export is bit-exact at TP=2 and PP=2; a layout that
puts a deepstack layer off the first pipeline stage is refused with the numbers. One torchrun
launch checks everything (~20 s on 2 cores, mostly imports)."""
import pytest

pytestmark = pytest.mark.distributed

LAYOUTS = ["tp1", "tp2", "tp2-sp", "pp2"]
TOL = 1e-5


@pytest.fixture(scope="module")
def parity(torchrun_module):
    return torchrun_module("qwen3vl_parity.py", nproc=2,
                           args=["--layouts", ",".join(LAYOUTS + ["tp1-recompute"])])


def test_positions_equal_hf_get_rope_index(parity):
    assert parity["mrope_equals_hf"] is True


@pytest.mark.parametrize("layout", LAYOUTS)
def test_logprobs_equal_hf(parity, layout):
    diffs = parity[layout]["diffs"]
    assert set(diffs) == {"padded", "packed"}, diffs
    assert max(diffs.values()) < TOL, diffs


@pytest.mark.parametrize("layout", ["tp1", "tp2", "pp2"])
def test_text_only_micro_batch_equals_hf(parity, layout):
    assert parity[layout]["text_only_diff"] < TOL


@pytest.mark.parametrize("layout", ["tp1", "tp2", "tp1-recompute"])
def test_weight_gradients_equal_hf(parity, layout):
    assert parity[layout]["grad_rel_diff"] < 1e-4, parity[layout].get("grad_worst")


@pytest.mark.parametrize("layout", ["tp2", "pp2"])
def test_hf_megatron_hf_roundtrip_is_bit_exact(parity, layout):
    assert parity[layout]["roundtrip_bit_exact"] is True


def test_deepstack_layers_off_the_first_stage_are_refused_with_the_numbers(parity):
    msg = parity["placement_error"]
    assert msg is not None and "pipeline_parallel=2 x 2 virtual stages" in msg
    assert "decoder layers 0-1 (2 levels)" in msg and "holds 1 of 4 layers" in msg
