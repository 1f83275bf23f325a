"""The Megatron Qwen3-VL-MoE (2 ranks, gloo, fp32; 8 experts, top-2) computes the same per-token
log-probs as the Hugging Face model with the same weights, within 1e-5, at EP=1 and EP=2 (DP=2:
each rank's own batch, its tokens sent to the other rank's experts), TP=2 (experts split over
expert-TP), TP=2 with sequence parallel, TP=2 x EP=2 (expert-TP 1) and PP=2, for a right-padded
batch with images and the same sequences packed; the expert and router weight gradients, summed
over data parallel as DDP would, equal transformers' single-process gradients of the same batches
(EP=1, EP=2, TP=2 and TP=2 x EP=2 with sequence parallel: Megatron trains MoE under TP only with
it); HF -> Megatron -> HF export is bit-exact at EP=2, TP=2, TP=2 x EP=2 and PP=2, and through the
converter's distributed checkpoint saved at EP=2 (by `prco-mega convert --ep 2 --verify`, run in
the same world) and read back at TP=2 and at PP=2; a source in
transformers' expert layout comes back in the hub's, bit for bit. One torchrun launch."""
import pytest

pytestmark = pytest.mark.distributed

LAYOUTS = ["ep1", "ep2", "tp2", "tp2-sp", "tp2-ep2-sp", "pp2"]
TRAINED = ["ep1", "ep2", "tp2-sp", "tp2-ep2-sp"]
EXPORTED = ["ep2", "tp2", "tp2-ep2-sp", "pp2"]
TOL = 1e-5


@pytest.fixture(scope="module")
def parity(torchrun_module):
    return torchrun_module("qwen3vl_moe_parity.py", nproc=2,
                           args=["--layouts", ",".join(LAYOUTS), "--convert"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_logprobs_equal_hf(parity, layout):
    diffs = parity[layout]["diffs"]
    assert set(diffs) == {"padded", "packed"}, diffs
    assert max(diffs.values()) < TOL, diffs


@pytest.mark.parametrize("layout", TRAINED)
def test_expert_and_router_gradients_equal_hf(parity, layout):
    result = parity[layout]
    for kind in ("experts", "routers", "all"):
        assert result[f"grad_rel_diff_{kind}"] < 1e-4, (kind, result["grad_worst"])


@pytest.mark.parametrize("layout", EXPORTED)
def test_hf_megatron_hf_roundtrip_is_bit_exact(parity, layout):
    assert parity[layout]["roundtrip_bit_exact"] is True


def test_convert_command_at_ep2_verifies_its_checkpoint(parity):
    # `prco-mega convert --ep 2 --verify` in this world: 0 = log-probs within its tolerance
    assert parity["convert"]["cli_ep2_status"] == 0


@pytest.mark.parametrize("target", ["tp2", "pp2"])
def test_converter_round_trip_from_ep2_is_bit_exact(parity, target):
    assert parity["convert"][f"{target}_bit_exact"] is True


def test_a_transformers_layout_source_comes_back_in_the_hub_layout(parity):
    assert parity["convert"]["from-transformers-layout_bit_exact"] is True
