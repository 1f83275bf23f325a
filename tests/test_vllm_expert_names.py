"""The engine's per-expert names (`rollout.vllm_engine`): what a push of a Qwen3-VL-MoE carries in
place of the file's fused hub-layout experts, and the fused group of a layer's experts."""
from prco_mega.rollout.vllm_cpu_moe import needs_cpu_expert_repack
from prco_mega.rollout.vllm_engine import fused_groups, per_expert_shapes

L = "model.language_model.layers.3.mlp."


def test_fused_hub_experts_become_per_expert_tensors():
    shapes = per_expert_shapes({L + "experts.gate_up_proj": (2, 128, 64),
                                L + "experts.down_proj": (2, 32, 128),
                                L + "gate.weight": (2, 128)})
    assert shapes == {L + "gate.weight": (2, 128),
                      **{L + f"experts.{e}.{m}.weight": (32, 128)
                         for e in range(2) for m in ("gate_proj", "up_proj")},
                      **{L + f"experts.{e}.down_proj.weight": (128, 32) for e in range(2)}}


def test_a_layers_experts_are_one_group_and_the_router_its_own():
    names = [L + "gate.weight"] + [L + f"experts.{e}.{m}.weight" for e in range(2)
                                   for m in ("gate_proj", "up_proj", "down_proj")]
    groups = fused_groups(names, {"qkv_proj": ["q_proj", "k_proj", "v_proj"]})
    assert groups == {L + "gate": [L + "gate.weight"], L + "experts": names[1:]}


def test_the_cpu_repack_is_for_vllm_0_32_on_cpu_only():
    assert needs_cpu_expert_repack("0.32.0", on_cpu=True)
    assert needs_cpu_expert_repack("0.32.1+cpu", on_cpu=True)
    assert not needs_cpu_expert_repack("0.32.0", on_cpu=False)
    assert not needs_cpu_expert_repack("0.33.0", on_cpu=True)
