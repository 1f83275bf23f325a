"""Qwen3-VL's pieces as specifications: interleaved MRoPE equals transformers' rotary angles, the
deepstack addition equals transformers' and is the same on any sequence slice, deepstack layers
off the first pipeline stage are refused with the numbers (by the provider and by the planner),
and the planner's parameter counts equal the model's."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prco_mega.learner.layout import check_deepstack_placement
from prco_mega.families.qwen3_vl.parts import add_deepstack, interleaved_mrope_freqs

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_interleaved_mrope_equals_transformers_rotary_embedding():
    from prco_mega.platform.cpu_torchvision import ensure_torchvision_importable

    ensure_torchvision_importable()
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding

    cfg = Qwen3VLTextConfig(hidden_size=256, num_attention_heads=2, head_dim=128,
                            rope_parameters={"rope_type": "default", "rope_theta": 5e6,
                                             "mrope_section": [24, 20, 20],
                                             "mrope_interleaved": True})
    rope = Qwen3VLTextRotaryEmbedding(cfg)
    pos = torch.randint(0, 5000, (3, 2, 7))
    cos, sin = rope(torch.zeros(1, dtype=torch.float32), pos)  # [B, S, D]
    ours = interleaved_mrope_freqs(pos, rope.inv_freq, [24, 20, 20])  # [S, B, 1, D]
    assert ours.shape == (7, 2, 1, 128)
    assert torch.equal(ours[:, :, 0].transpose(0, 1).cos(), cos)
    assert torch.equal(ours[:, :, 0].transpose(0, 1).sin(), sin)


def test_deepstack_addition_equals_transformers_and_any_sequence_slice():
    g = torch.Generator().manual_seed(0)
    hidden_SBH = torch.randn(10, 2, 4, generator=g)
    mask_BS = torch.rand(2, 10, generator=g) < 0.4
    feats = torch.randn(int(mask_BS.sum()), 4, generator=g)
    full = add_deepstack(hidden_SBH, mask_BS, feats)
    ref_BSH = hidden_SBH.transpose(0, 1).clone()  # transformers: batch-major masked add
    ref_BSH[mask_BS] = ref_BSH[mask_BS] + feats
    assert torch.equal(full, ref_BSH.transpose(0, 1))
    halves = [add_deepstack(hidden_SBH[a:a + 5], mask_BS, feats, seq_offset=a) for a in (0, 5)]
    assert torch.equal(torch.cat(halves), full)


def test_text_only_micro_batch_is_left_alone():
    hidden_SBH = torch.randn(6, 1, 4)
    out = add_deepstack(hidden_SBH, torch.zeros(1, 6, dtype=torch.bool), torch.zeros(0, 4))
    assert out is hidden_SBH


def test_deepstack_layers_off_the_first_stage_are_refused_with_the_numbers():
    check_deepstack_placement(3, 3, 36, pp=12, vpp=None)
    with pytest.raises(ValueError, match=r"layers 0-2 \(3 levels\).*pipeline_parallel=8 x 4 "
                                         r"virtual stages the first stage holds 2 of 64"):
        check_deepstack_placement(3, 2, 64, pp=8, vpp=4)


def test_the_planner_refuses_a_layout_that_splits_the_deepstack_layers():
    from prco_mega.config import load_yaml
    from prco_mega.cluster.plan import plan_inputs_from_config

    data = load_yaml(CONFIGS / "qwen3vl_32b_h100x32.yaml", [
        "learner.parallel.tensor_parallel=4", "learner.parallel.pipeline_parallel=8",
        "learner.parallel.virtual_pipeline_parallel=4", "cluster.data_parallel=1"])
    with pytest.raises(ValueError, match="the first stage holds 2 of 64 layers"):
        plan_inputs_from_config(data)


@pytest.mark.parametrize("name,published", [("qwen3-vl-8b", 8.77e9), ("qwen3-vl-32b", 33.4e9)])
def test_qwen3vl_parameter_counts_match_the_published_model_sizes(name, published):
    from prco_mega.cluster.dims import total_params
    from prco_mega.families.qwen3_vl.preset import QWEN3_VL

    assert total_params(QWEN3_VL[name]) == pytest.approx(published, rel=0.005)


def test_planner_counts_every_parameter_of_the_tiny_qwen3vl():
    from prco_mega.bridge.convert import expected_hf_tensors
    from prco_mega.families.qwen3_vl.tiny import tiny_qwen3vl_config
    from prco_mega.cluster.dims import dims_from_hf_config, total_params

    cfg = tiny_qwen3vl_config()
    shapes = expected_hf_tensors(cfg)
    assert total_params(dims_from_hf_config(cfg.to_dict())) == sum(
        int(torch.Size(s).numel()) for s in shapes.values())


def test_model_family_must_match_the_checkpoint(tmp_path):
    import json

    from prco_mega.runtime.warm_start import check_family

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    check_family(tmp_path, None)  # the checkpoint decides
    check_family(tmp_path, "qwen2_5_vl")
    with pytest.raises(ValueError, match="model.family is 'qwen3_vl' but .* has model_type "
                                         "'qwen2_5_vl'"):
        check_family(tmp_path, "qwen3_vl")
