"""Expert-parallel layouts are judged by the one rule set (`learner.layout.check_layout`) before any
process group starts, each refusal a ValueError naming the numbers: EP divides the experts,
expert-TP divides each expert's width, EP x expert-TP divides the TP x DP ranks of a pipeline
stage (Megatron's `initialize_model_parallel` needs world % (expert-TP x EP x PP) == 0), a dense
model takes no expert layout, and deepstack stays on the first stage. Pure Python, no Megatron."""
import pytest

from prco_mega.families.qwen3_vl_moe.tiny import TinyQwen3VLMoeSizes
from prco_mega.learner.layout import check_layout, layout_dims

# Qwen3-VL-30B-A3B's sizes as its config.json states them
QWEN3VL_30B_A3B = {
    "model_type": "qwen3_vl_moe", "vision_config": {"deepstack_visual_indexes": [8, 16, 24]},
    "text_config": {"num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4,
                    "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
                    "moe_intermediate_size": 768, "num_experts": 128, "num_experts_per_tok": 8}}
DENSE = {"model_type": "qwen2_5_vl", "text_config": {
    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
    "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944}}


@pytest.mark.parametrize("kwargs, ep, etp", [
    (dict(world_size=8, tp=1, pp=1, ep=8), 8, 1),         # the peers' one-node layout
    (dict(world_size=8, tp=2, pp=1, ep=4, etp=1), 4, 1),  # EP across TP x DP
    (dict(world_size=8, tp=2, pp=1, ep=4), 4, 2),         # expert-TP defaults to TP
    (dict(world_size=16, tp=2, pp=2, ep=8, etp=1), 8, 1),
])
def test_expert_layouts_megatron_accepts_pass(kwargs, ep, etp):
    layout = check_layout(QWEN3VL_30B_A3B, **kwargs)
    assert (layout.ep, layout.etp) == (ep, etp)


@pytest.mark.parametrize("kwargs, numbers", [
    (dict(world_size=6, tp=1, pp=1, ep=3), ["expert_parallel (3)", "num_experts (128)"]),
    (dict(world_size=8, tp=1, pp=1, ep=2, etp=5),
     ["expert_tensor_parallel (5)", "moe_intermediate_size (768)"]),
    (dict(world_size=8, tp=2, pp=1, ep=8),
     ["expert_parallel * expert_tensor_parallel (8 * 2 = 16)",
      "tensor_parallel * data_parallel (2 * 4 = 8)"]),
    (dict(world_size=16, tp=1, pp=4, ep=8), ["(8 * 1 = 8)", "(1 * 4 = 4)"]),
    (dict(world_size=8, tp=1, pp=1, ep=0), ["expert_parallel must be >= 1, got 0"]),
])
def test_bad_expert_layout_error_names_the_numbers(kwargs, numbers):
    with pytest.raises(ValueError) as err:
        check_layout(QWEN3VL_30B_A3B, **kwargs)
    for n in numbers:
        assert n in str(err.value)


def test_a_dense_model_takes_no_expert_layout():
    check_layout(DENSE, world_size=4, tp=2, pp=1)
    with pytest.raises(ValueError, match=r"expert_parallel \(2\) and expert_tensor_parallel "
                                         r"\(2\) need a mixture-of-experts model"):
        check_layout(DENSE, world_size=4, tp=2, pp=1, ep=2)


def test_the_experts_are_read_as_transformers_writes_them_and_from_tiny_sizes():
    written = {**QWEN3VL_30B_A3B, "text_config": {
        k if k != "num_experts" else "num_local_experts": v
        for k, v in QWEN3VL_30B_A3B["text_config"].items()}}
    dims = layout_dims(written)
    assert dims == layout_dims(QWEN3VL_30B_A3B)
    assert (dims.num_experts, dims.moe_ffn_hidden_size) == (128, 768)
    tiny = TinyQwen3VLMoeSizes()
    assert check_layout(tiny, world_size=2, tp=2, pp=1, ep=2, etp=1).ep == 2
    with pytest.raises(ValueError, match=r"expert_parallel \(3\) must divide num_experts \(8\)"):
        check_layout(tiny, world_size=3, tp=1, pp=1, ep=3)


def test_deepstack_still_on_the_first_stage_with_experts():
    with pytest.raises(ValueError, match=r"0-2 \(3 levels\).*pipeline_parallel=24 the first "
                                         r"stage holds 2 of 48 layers"):
        check_layout(QWEN3VL_30B_A3B, world_size=24, tp=1, pp=24)


def test_learner_config_takes_expert_parallel_and_router_losses_off_by_default():
    from prco_mega.learner.config import LearnerConfig, MoEConfig, ParallelConfig

    cfg = LearnerConfig(parallel=ParallelConfig(tensor_parallel=2, expert_parallel=4,
                                                expert_tensor_parallel=1))
    cfg.validate()
    assert cfg.moe.megatron_fields() == {"moe_router_load_balancing_type": "none",
                                         "moe_aux_loss_coeff": 0.0, "moe_z_loss_coeff": None}
    with pytest.raises(ValueError, match=r"expert_parallel \(0\) must be >= 1"):
        ParallelConfig(expert_parallel=0).validate()
    with pytest.raises(ValueError, match=r"aux_loss_coeff \(0.01\) and load_balancing \('none'\)"):
        MoEConfig(aux_loss_coeff=0.01).validate()
    MoEConfig(load_balancing="seq_aux_loss", aux_loss_coeff=0.001, z_loss_coeff=0.001).validate()
