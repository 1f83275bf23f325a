"""A parallel layout that cannot split the model is refused before any process group starts,
with a ValueError that names the numbers (`check_layout`, the one rule set of plan, launch,
convert and the learner; tests/test_refusals.py runs each rule through the command line)."""
import pytest

from prco_mega.learner.layout import LayoutDims, check_layout
from prco_mega.families.qwen2_5_vl.tiny import TinySizes

# Qwen2.5-VL-7B's language model, as its config.json states it
QWEN25VL_7B = {"model_type": "qwen2_5_vl", "text_config": {
    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
    "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944}}


def test_valid_layouts_give_data_parallel_size_and_layers_per_chunk():
    layout = check_layout(TinySizes(), world_size=8, tp=2, pp=2)
    assert (layout.dp, layout.layers_per_chunk) == (2, 2)
    layout = check_layout(QWEN25VL_7B, world_size=16, tp=4, pp=2, vpp=2)
    assert (layout.dp, layout.layers_per_chunk) == (2, 7)


@pytest.mark.parametrize("kwargs, numbers", [
    (dict(world_size=8, tp=8, pp=1), ["tensor_parallel (8)", "num_attention_heads (28)"]),
    (dict(world_size=8, tp=8, pp=1, dims=LayoutDims(28, 32, 4, 152064, 3584, 18944)),
     ["tensor_parallel (8)", "num_key_value_heads (4)"]),  # heads divide, KV heads do not
    (dict(world_size=6, tp=4, pp=1), ["world_size (6)", "4 * 1 = 4"]),
    (dict(world_size=3, tp=1, pp=3), ["pipeline_parallel (3)", "num_hidden_layers (28)"]),
    (dict(world_size=8, tp=1, pp=4, vpp=2), ["4 * 2 = 8", "num_hidden_layers (28)"]),
    (dict(world_size=2, tp=2, pp=1, dims=LayoutDims(4, 4, 2, 511, 64, 128)),
     ["tensor_parallel (2)", "vocab_size (511)"]),
])
def test_bad_layout_error_names_the_numbers(kwargs, numbers):
    dims = kwargs.pop("dims", QWEN25VL_7B)
    with pytest.raises(ValueError) as err:
        check_layout(dims, **kwargs)
    for n in numbers:
        assert n in str(err.value)


def test_kv_heads_must_divide_by_tp():
    dims = LayoutDims(num_layers=4, num_heads=8, num_kv_heads=2, vocab_size=512, hidden_size=64,
                     ffn_hidden_size=128)
    with pytest.raises(ValueError, match=r"tensor_parallel \(4\) must divide num_key_value_heads \(2\)"):
        check_layout(dims, world_size=4, tp=4, pp=1)


def test_virtual_pipeline_needs_a_pipeline():
    with pytest.raises(ValueError, match=r"virtual_pipeline \(2\).*pipeline_parallel >= 2 \(got 1\)"):
        check_layout(TinySizes(), world_size=2, tp=2, pp=1, vpp=2)


# Qwen3-VL-8B's sizes as its config.json states them: 36 layers, three deepstack levels
QWEN3VL_8B = {"model_type": "qwen3_vl", "vision_config": {"deepstack_visual_indexes": [8, 16, 24]},
              "text_config": {"num_hidden_layers": 36, "num_attention_heads": 32,
                              "num_key_value_heads": 8, "vocab_size": 151936, "hidden_size": 4096,
                              "intermediate_size": 12288}}


def test_deepstack_levels_are_read_from_the_config_and_must_sit_on_the_first_stage():
    assert check_layout(QWEN3VL_8B, world_size=12, tp=1, pp=12).layers_per_chunk == 3
    with pytest.raises(ValueError, match=r"0-2 \(3 levels\).*pipeline_parallel=18 the first "
                                         r"stage holds 2 of 36 layers"):
        check_layout(QWEN3VL_8B, world_size=18, tp=1, pp=18)
    with pytest.raises(ValueError, match=r"pipeline_parallel=6 x 3 virtual stages the first "
                                         r"stage holds 2 of 36"):
        check_layout(QWEN3VL_8B, world_size=6, tp=1, pp=6, vpp=3)


def test_engine_tensor_parallel_must_divide_the_heads():
    check_layout(QWEN25VL_7B, world_size=8, tp=2, pp=1, engine_tp=4)
    with pytest.raises(ValueError, match=r"engine.tensor_parallel_size \(8\) must divide "
                                         r"num_attention_heads \(28\)"):
        check_layout(QWEN25VL_7B, world_size=8, tp=2, pp=1, engine_tp=8)
