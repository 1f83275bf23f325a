"""The Megatron Qwen2.5-VL (2 ranks, gloo, fp32) computes the same per-token log-probs as the
Hugging Face model with the same weights, at TP=1, TP=2, TP=2 with sequence parallelism, PP=2,
PP=2 with 2 virtual stages, and PP=2 with tied embeddings, for a right-padded image batch and for
the same sequences packed; its weight gradients equal HF's; HF -> Megatron -> HF export is
bit-exact. One torchrun launch checks every layout (~15-25 s on 2 cores, mostly imports)."""
import pytest

pytestmark = pytest.mark.distributed

LAYOUTS = ["tp1", "tp2", "pp2", "pp2-vpp2", "tp2-sp", "pp2-tied"]
TOL = 1e-4


@pytest.fixture(scope="module")
def parity(torchrun_module):
    return torchrun_module("qwen_parity.py", nproc=2, args=["--layouts", ",".join(LAYOUTS)])


def test_cpu_compat_layer_is_active_and_idempotent(parity):
    assert parity["compat_ok"] is True


def test_mrope_positions_equal_hf_get_rope_index(parity):
    assert parity["mrope_equals_hf"] and parity["mrope_equals_hf_tied"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_logprobs_equal_hf(parity, layout):
    diffs = parity[layout]["diffs"]
    assert set(diffs) == {"padded", "packed"}, diffs
    assert max(diffs.values()) < TOL, diffs


@pytest.mark.parametrize("layout", ["tp1", "tp2"])
def test_weight_gradients_equal_hf(parity, layout):
    assert parity[layout]["grad_rel_diff"] < TOL


@pytest.mark.parametrize("layout", ["tp2", "pp2", "pp2-vpp2", "pp2-tied"])
def test_hf_megatron_hf_roundtrip_is_bit_exact(parity, layout):
    assert parity[layout]["roundtrip_bit_exact"] is True
