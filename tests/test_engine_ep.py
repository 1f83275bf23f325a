"""Engine expert parallel (`engine.enable_expert_parallel`): which experts an engine rank loads
(vLLM's linear placement, whole experts), what the weight sync sends it, what its pushes may
carry, and the CPU kernel fix that makes vLLM 0.32's expert parallel run (`rollout.vllm_cpu_moe`)."""
import json

import pytest
import torch

from prco_mega.bridge.colocated import own_experts_only
from prco_mega.bridge.mapping import Heads
from prco_mega.bridge.slices import WHOLE, Span, engine_experts, expert_span, hull
from prco_mega.bridge.units import Slab, SyncContext, need_of
from prco_mega.rollout.config import EngineConfig
from prco_mega.rollout.vllm_engine import _routed_experts_of, fused_groups, held_by_rank

L = "model.language_model.layers.0."
ARGS = {"model_type": "qwen3_vl_moe", "heads": Heads(4, 2), "tied": True}


def expert(e: int, member: str = "gate_proj") -> Slab:
    kind = "row" if member == "down_proj" else "gate_up"
    shape = (128, 32) if member == "down_proj" else (32, 128)
    return Slab(f"{L}mlp.experts.{e}.{member}.weight", kind, 0, shape, WHOLE, torch.zeros(shape))


def ctx(engine_experts: int) -> SyncContext:
    return SyncContext(ARGS, None, None, torch.device("cpu"), slot=(1, 2),
                       engine_experts=engine_experts)


def test_experts_are_placed_as_vllms_linear_placement():
    assert [list(engine_experts(8, r, 2)) for r in range(2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # 10 over 4: blocks of 2, the first 10 % 4 ranks one more
    assert [list(engine_experts(10, r, 4)) for r in range(4)] == [[0, 1, 2], [3, 4, 5], [6, 7],
                                                                   [8, 9]]


def test_an_engine_rank_loads_its_experts_whole_and_no_row_of_the_others():
    assert expert_span(5, 8, 1, 2) == WHOLE
    held_elsewhere = expert_span(5, 8, 0, 2)
    assert not held_elsewhere.whole and held_elsewhere.numel((32, 128)) == 0
    assert hull([held_elsewhere, Span(0, 16, 32)]) == Span(0, 16, 32)  # empty spans add nothing


def test_the_sync_needs_whole_experts_under_engine_ep_and_tp_rows_without():
    gate, down = expert(5), expert(5, "down_proj")
    q = Slab(L + "self_attn.q_proj.weight", "qkv", 0, (128, 128), WHOLE, torch.zeros(128, 128))
    assert need_of(gate, [(1, 2)], ctx(8)) == WHOLE
    assert need_of(down, [(1, 2)], ctx(8)) == WHOLE
    assert need_of(gate, [(0, 2)], ctx(8)).numel(gate.shape) == 0
    assert need_of(gate, [(0, 2), (1, 2)], ctx(8)) == WHOLE  # a pipeline group of both ranks
    assert need_of(gate, [(1, 2)], ctx(0)) == Span(0, 16, 32)  # no engine EP: its TP rows
    assert need_of(down, [(1, 2)], ctx(0)) == Span(1, 16, 32)
    assert need_of(q, [(1, 2)], ctx(8)) == need_of(q, [(1, 2)], ctx(0)) == Span(0, 64, 128)


def test_a_rank_pushes_only_the_experts_its_engine_rank_holds():
    router = Slab(L + "mlp.gate.weight", "replicated", 0, (8, 128), WHOLE, torch.zeros(8, 128))
    kept = own_experts_only([router] + [expert(e) for e in range(8)], ctx(8))  # slot (1, 2)
    assert [s.name for s in kept] == [router.name] + [expert(e).name for e in range(4, 8)]


def test_engine_groups_and_pushes_hold_only_the_ranks_experts():
    names = [L + "mlp.gate.weight"] + [f"{L}mlp.experts.{e}.{m}.weight" for e in range(4)
                                       for m in ("gate_proj", "up_proj", "down_proj")]
    held = [n for n in names if held_by_rank(n, [2, 3])]
    assert held == names[:1] + names[7:]
    assert fused_groups(held, {})[L + "mlp.experts"] == names[7:]
    assert all(held_by_rank(n, None) for n in names)


def test_engine_ep_needs_tensor_parallel_and_a_moe_model(tmp_path):
    with pytest.raises(ValueError, match="enable_expert_parallel.*tensor_parallel_size > 1"):
        EngineConfig(enable_expert_parallel=True)
    config = EngineConfig(tensor_parallel_size=2, enable_expert_parallel=True)
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "qwen2_5_vl", "text_config": {"hidden_size": 128}}))
    with pytest.raises(ValueError, match="enable_expert_parallel is on .* not a mixture"):
        _routed_experts_of(tmp_path, config)
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "qwen3_vl_moe", "text_config": {"num_experts": 8}}))
    assert _routed_experts_of(tmp_path, config) == 8


# ----------------------------------------------------------------------------- vLLM's CPU kernel
def _moe_reference(x, w13, w2, ids, weights):
    """sum_k weights[t, k] * down_e(silu(gate_e x) * up_e x), e = ids[t, k]; x [T, H],
    w13 [E, 2I, H], w2 [E, H, I]."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(ids.shape[1]):
            gate, up = (w13[ids[t, k]] @ x[t]).chunk(2)
            out[t] += weights[t, k] * (w2[ids[t, k]] @ (torch.nn.functional.silu(gate) * up))
    return out


@pytest.mark.vllm
def test_the_expert_map_fix_makes_the_cpu_kernel_exact_under_expert_parallel():
    """Two ranks of 2 of 4 experts each run vLLM's CPU kernel on the same routed tokens; their
    outputs must sum to the full MoE (the all-reduce). Stock vLLM passes the global ids: where
    they fall inside the local count (all picks among experts 0 and 1 here) rank 1 computes its
    own experts 2 and 3 in their place, silently (beyond, the kernel reads out of bounds)."""
    pytest.importorskip("vllm")
    from prco_mega.platform.cpu_torchvision import ensure_torchvision_importable

    ensure_torchvision_importable()
    from types import SimpleNamespace

    from vllm._custom_ops import cpu_prepack_moe_weight
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation
    from vllm.model_executor.layers.fused_moe.expert_map_manager import determine_expert_map
    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts

    from prco_mega.rollout import vllm_cpu_moe

    for experts, size in ((8, 2), (10, 4)):
        for rank in range(size):
            _, expert_map, _ = determine_expert_map(size, rank, experts)
            assert [e for e, i in enumerate(expert_map.tolist()) if i >= 0] == \
                list(engine_experts(experts, rank, size))
    g = torch.Generator().manual_seed(0)
    w13, w2 = torch.randn(4, 64, 32, generator=g) / 6, torch.randn(4, 32, 32, generator=g) / 6
    x = torch.randn(6, 32, generator=g)
    ids = torch.tensor([[0, 1], [1, 0]] * 3, dtype=torch.int32)
    weights = torch.rand(6, 2, generator=g)
    full = _moe_reference(x, w13, w2, ids.long(), weights)
    vllm_cpu_moe.install_expert_map()
    stock = CPUUnquantizedExperts.apply.__wrapped__

    def run(apply, rank: int) -> torch.Tensor:
        kernel = CPUUnquantizedExperts.__new__(CPUUnquantizedExperts)
        kernel._use_zentorch, kernel.quant_config = False, SimpleNamespace(w1_bias=None,
                                                                           w2_bias=None)
        local = slice(2 * rank, 2 * rank + 2)
        out = torch.empty_like(x)
        apply(kernel, output=out, hidden_states=x, w1=cpu_prepack_moe_weight(w13[local], "vec"),
              w2=cpu_prepack_moe_weight(w2[local], "vec"), topk_weights=weights, topk_ids=ids,
              activation=MoEActivation.SILU, global_num_experts=4,
              expert_map=determine_expert_map(2, rank, 4)[1], a1q_scale=None, a2_scale=None,
              workspace13=None, workspace2=None, expert_tokens_meta=None,
              apply_router_weight_on_input=False)
        return out

    fixed = run(CPUUnquantizedExperts.apply, 0) + run(CPUUnquantizedExperts.apply, 1)
    assert torch.allclose(fixed, full, atol=1e-5)
    assert not torch.allclose(run(stock, 0) + run(stock, 1), full, atol=1e-2)
    assert vllm_cpu_moe.remapped_calls() >= 2
