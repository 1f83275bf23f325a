"""The memory planner: its formulas against published figures and hand-computed cases, and the
shipped H100 cluster configs fitting an 80 GB GPU."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from prco_mega.config import load_yaml
from prco_mega.cluster.plan import (ModelDims, PlanInputs, check_fits, plan_config,
                                    plan_inputs_from_config, plan_memory, total_params)
from prco_mega.families.qwen2_5_vl.preset import QWEN25_VL
from prco_mega.cluster.memory import (decoder_activation_bytes, fused_loss_head_bytes,
                                      inflight_chunks, kv_bytes_per_token, layer_activation_bytes,
                                      mlp_inner_bytes, optimizer_bytes_per_param,
                                      recompute_activation_bytes, recompute_input_bytes,
                                      unfused_loss_head_bytes)
from prco_mega.learner.config import RecomputeConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
CLUSTER_CONFIGS = ["qwen25vl_3b_h100x8.yaml", "qwen25vl_7b_h100x8.yaml",
                   "qwen25vl_32b_h100x32.yaml", "qwen25vl_72b_h100x64.yaml",
                   "qwen3vl_8b_h100x8.yaml", "qwen3vl_32b_h100x32.yaml",
                   "qwen3vl_30b_a3b_h100x8.yaml", "qwen3vl_30b_a3b_h100x16.yaml",
                   "qwen3vl_235b_a22b_h100x192.yaml"]
GIB = 2**30
# Qwen2.5-7B text-only (Hugging Face config.json of Qwen/Qwen2.5-7B): a dense decoder, no ViT.
QWEN25_7B_TEXT = ModelDims("qwen2.5-7b", hidden=3584, intermediate=18944, layers=28, heads=28,
                           kv_heads=4, vocab=152064, tie_embeddings=False)


def _row(plan, prefix: str):
    rows = [r for r in plan.train if r.name.startswith(prefix)]
    assert len(rows) == 1, [r.name for r in plan.train]
    return rows[0]


@pytest.mark.parametrize("name,published", [
    ("qwen2.5-vl-3b", 3.75e9), ("qwen2.5-vl-7b", 8.29e9),
    ("qwen2.5-vl-32b", 33.5e9), ("qwen2.5-vl-72b", 73.4e9)])
def test_parameter_counts_match_the_published_model_sizes(name, published):
    # Model sizes shown on the Hugging Face model pages (safetensors parameter counts).
    assert total_params(QWEN25_VL[name]) == pytest.approx(published, rel=0.005)


@pytest.mark.parametrize("d", [1, 2, 8, 64])
def test_bytes_per_param_match_megatron_distributed_optimizer_table(d):
    # Megatron-Core docs, "Distributed Optimizer": theoretical bytes per parameter.
    for param, grad, non_dist, dist in [(2, 2, 20, 4 + 16 / d), (2, 4, 18, 6 + 12 / d),
                                        (4, 4, 16, 8 + 8 / d)]:
        assert param + grad + optimizer_bytes_per_param(param, grad, False, d) == non_dist
        assert param + grad + optimizer_bytes_per_param(param, grad, True, d) == pytest.approx(dist)


def test_zero_stage1_figure_for_a_7_5b_model_on_64_gpus():
    # ZeRO (Rajbhandari et al. 2020), Figure 1: 7.5B params, N_d = 64, P_os -> 31.4 GB per GPU.
    # Megatron also keeps an fp32 main-grad shard (4/d B/param) that ZeRO's K = 12 leaves out.
    psi, d = 7.5e9, 64
    ours = psi * (2 + 2 + optimizer_bytes_per_param(2, 2, True, d)) / 1e9
    assert ours == pytest.approx(31.4, rel=0.02)


def _dense_inputs(**kw) -> PlanInputs:
    base = dict(model=QWEN25_7B_TEXT, tp=4, pp=1, dp=2, micro_batch_tokens=8192,
                max_model_len=4096, rollout_tp=4, rollout_gpu_memory_utilization=0.3)
    return PlanInputs(**{**base, **kw})


def test_weights_of_a_7b_dense_model_at_tp4_are_a_quarter_of_bf16_params():
    plan = plan_memory(_dense_inputs())
    expected = total_params(QWEN25_7B_TEXT) * 2 / 4  # norms are replicated: a hair above
    assert _row(plan, "weights").bytes == pytest.approx(expected, rel=0.002)
    assert _row(plan, "gradients").bytes == pytest.approx(2 * expected, rel=0.002)


def test_distributed_optimizer_states_divide_by_dp_and_nothing_else_does():
    p2, p8 = plan_memory(_dense_inputs(dp=2)), plan_memory(_dense_inputs(dp=8))
    opt2, opt8 = _row(p2, "optimizer").bytes, _row(p8, "optimizer").bytes
    assert opt2 == pytest.approx(4 * opt8)
    # fp32 master + Adam m, v = 12 B per parameter of this rank, sharded over DP
    params_rank = _row(p2, "weights").bytes / 2
    assert opt2 == pytest.approx(12 * params_rank / 2)
    for name in ("weights", "gradients"):
        assert _row(p2, name).bytes == _row(p8, name).bytes


def test_activation_formula_reduces_to_korthikanti_for_gpt():
    # Korthikanti et al. 2022, GPT-3 175B: h=12288, a=96, s=2048, b=1, t=8 (their Table 3 model).
    h, a, s, b, t = 12288, 96, 2048, 1, 8
    gpt = dict(tokens=s * b, hidden=h, kv_hidden=h, ffn=4 * h, heads=a, seq=s, flash=False,
               gated_mlp=False, dropout=True)
    assert layer_activation_bytes(**gpt) == s * b * h * (34 + 5 * a * s / h)
    assert layer_activation_bytes(**gpt, tp=t) == pytest.approx(
        s * b * h * (10 + 24 / t + 5 * a * s / (h * t)))
    assert layer_activation_bytes(**gpt, tp=t, sp=True) == pytest.approx(
        s * b * h * (34 / t + 5 * a * s / (h * t)))
    assert recompute_input_bytes(s * b, h) == 2 * s * b * h


@pytest.mark.parametrize("p,v", [(2, 1), (4, 1), (4, 2), (8, 3)])
def test_first_pipeline_stage_holds_korthikanti_in_flight_layers(p, v):
    layers = p * v * 10
    held = inflight_chunks(p, v, rank=0) * layers // (p * v)
    assert held == pytest.approx(layers * (1 + (p - 1) / (p * v)) if v > 1 else layers)
    assert inflight_chunks(p, 1, rank=p - 1) == 1  # the last 1F1B stage holds one micro-batch


def test_recompute_modes_order_activation_memory():
    plan = plan_memory(_dense_inputs(flash_attention=False))
    act = {m: _row(plan, f"activations, recompute={m}").bytes
           for m in ("none", "selective", "full")}
    assert act["full"] < act["selective"] < act["none"]


@pytest.mark.parametrize("rc,kept,rerun", [
    (RecomputeConfig("none"), 2 * 8 * 10, 0),
    (RecomputeConfig("selective"), 2 * 8 * 6, 10 - 6),
    (RecomputeConfig("full", "uniform", 1), 2 * 8 * 1, 10),
    (RecomputeConfig("full", "uniform", 4), 2 * 2 * 1, 4 * 10),
    (RecomputeConfig("full", "block", 3), 2 * (3 * 1 + 5 * 10), 0),
    (RecomputeConfig("full", "block", 8), 2 * 8 * 1, 10)])
def test_recompute_bytes_by_hand(rc, kept, rerun):
    # 2 micro-batches of an 8-layer chunk in flight; a layer keeps 10 B, 6 B with its selective
    # modules re-run, 1 B as a checkpoint's input. Block: the first k layers re-run after the
    # later ones have freed theirs, so they add to the peak only when k covers the chunk.
    assert recompute_activation_bytes(rc, 8, 2, layer=10.0, selective_layer=6.0,
                                      layer_input=1.0) == (kept, rerun)


def test_selective_mlp_recompute_drops_the_swiglu_inner_activations_per_layer():
    x = _dense_inputs(flash_attention=True)
    attn, _ = decoder_activation_bytes(x, RecomputeConfig("selective", modules=["core_attn"]), 1)
    mlp, rerun = decoder_activation_bytes(
        x, RecomputeConfig("selective", modules=["core_attn", "mlp"]), 1)
    inner = mlp_inner_bytes(x.micro_batch_tokens, QWEN25_7B_TEXT.intermediate, x.tp)
    assert inner == x.micro_batch_tokens * 6 * 18944 / 4
    assert attn - mlp == pytest.approx(QWEN25_7B_TEXT.layers * inner)
    assert rerun == pytest.approx(inner)  # one layer's MLP re-runs at a time


def test_each_recompute_setting_maps_to_the_megatron_fields():
    assert RecomputeConfig("none").megatron_fields() == {"recompute_granularity": None}
    assert RecomputeConfig("selective", modules=["core_attn", "mlp"]).megatron_fields() == {
        "recompute_granularity": "selective", "recompute_modules": ["core_attn", "mlp"]}
    assert RecomputeConfig("full", "block", 3).megatron_fields() == {
        "recompute_granularity": "full", "recompute_method": "block", "recompute_num_layers": 3}


def test_the_planner_counts_the_learners_own_recompute_setting():
    path = CONFIGS / "qwen25vl_7b_h100x8.yaml"
    counted = {mode: [r.name for r in plan_config(
        str(path), [f"learner.recompute.granularity={mode}"]).train
        if r.counted and r.name.startswith("activations")] for mode in ("none", "full")}
    assert counted == {"none": ["activations, recompute=none"],
                       "full": ["activations, recompute=full"]}
    # one source of truth: the planner-only setting is gone
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['recompute'\] in "
                                         r"cluster.memory"):
        plan_config(str(path), ["cluster.memory.recompute=none"])


def test_a_uniform_group_that_does_not_divide_the_chunk_is_refused():
    rc = RecomputeConfig("full", "uniform", 3)
    with pytest.raises(ValueError, match=r"num_layers \(3\) must divide the decoder layers of "
                                         r"each pipeline chunk \(28\)"):
        plan_memory(_dense_inputs(recompute=rc))


def test_fused_loss_head_memory_does_not_grow_with_vocab_but_unfused_does():
    t, h = 16384, 3584
    fused = [fused_loss_head_bytes(t, v, h) for v in (32768, 65536, 152064, 262144)]
    unfused = [unfused_loss_head_bytes(t, v) for v in (32768, 65536, 152064, 262144)]
    assert all(f <= 8 * t * h + 16 * t for f in fused)  # bounded by the hidden states' size
    assert max(fused) < 1.1 * min(fused)
    assert unfused[1] == 2 * unfused[0] and unfused[3] == 8 * unfused[0]
    # the same through a whole plan: vocab x4 leaves the fused row flat
    small = plan_memory(_dense_inputs())
    big = plan_memory(_dense_inputs(model=dataclasses.replace(QWEN25_7B_TEXT, vocab=4 * 152064)))
    assert _row(big, "loss head, fused").bytes < 1.1 * _row(small, "loss head, fused").bytes
    assert _row(big, "loss head, unfused").bytes == 4 * _row(small, "loss head, unfused").bytes


def test_kv_cache_bytes_per_token():
    m7, m72 = QWEN25_VL["qwen2.5-vl-7b"], QWEN25_VL["qwen2.5-vl-72b"]
    assert kv_bytes_per_token(m7, tp=1) == 2 * 28 * 4 * 128 * 2
    assert kv_bytes_per_token(m72, tp=8) == 2 * 80 * 1 * 128 * 2
    assert kv_bytes_per_token(m72, tp=16) == kv_bytes_per_token(m72, tp=8)  # KV heads replicate


@pytest.mark.parametrize("name", CLUSTER_CONFIGS)
def test_each_cluster_config_fits_an_80gb_h100(name):
    plan = check_fits(plan_config(str(CONFIGS / name)))
    assert plan.inputs.gpu_memory_gib <= 80
    assert plan.peak <= plan.inputs.gpu_memory_gib * GIB
    assert plan.kv_tokens >= plan.inputs.max_model_len
    table = plan.table()
    for item in ("weights", "gradients", "optimizer", "activations, recompute=none",
                 "activations, recompute=full", "loss head, fused", "loss head, unfused",
                 "vLLM weights", "vLLM KV cache", "FITS"):
        assert item in table


def test_a_kl_term_adds_one_frozen_copy_of_the_weights_and_nothing_else():
    data = load_yaml(CONFIGS / "qwen25vl_7b_h100x8.yaml")
    without = plan_memory(plan_inputs_from_config(data)[0])
    with_kl = plan_memory(plan_inputs_from_config({**data, "algo": {"kl_coef": 0.01}})[0])
    weights = _row(without, "weights").bytes
    assert _row(with_kl, "reference weights").bytes == weights
    assert with_kl.train_total == pytest.approx(without.train_total + weights)
    assert not any(r.name.startswith("reference") for r in without.train)


def test_an_oversized_config_is_refused_with_its_breakdown():
    # 7B without TP: ~58 GiB of learner state stays resident beside a 32 GiB vLLM budget.
    data = load_yaml(CONFIGS / "qwen25vl_7b_h100x8.yaml",
                     ["learner.parallel.tensor_parallel=1",
                      "learner.parallel.sequence_parallel=false",
                      "learner.batching.pad_to_multiple=1", "cluster.data_parallel=8"])
    plan = plan_memory(plan_inputs_from_config(data)[0])
    assert not plan.fits
    with pytest.raises(ValueError, match="rollout phase needs") as err:
        check_fits(plan)
    assert "gradients" in str(err.value) and "vLLM KV cache" in str(err.value)


def test_a_kv_cache_smaller_than_one_sequence_is_refused():
    data = load_yaml(CONFIGS / "qwen25vl_72b_h100x64.yaml", ["engine.gpu_memory_utilization=0.23"])
    plan = plan_memory(plan_inputs_from_config(data)[0])
    assert any("max_model_len (8192)" in p for p in plan.problems)


def test_micro_batch_smaller_than_a_trajectory_is_refused():
    data = load_yaml(CONFIGS / "qwen25vl_7b_h100x8.yaml",
                     ["learner.batching.micro_batch_tokens=4096"])
    with pytest.raises(ValueError, match=r"micro_batch_tokens \(4096\).*max_model_len \(8192\)"):
        plan_inputs_from_config(data)


def test_moe_experts_are_sharded_by_ep_and_their_optimizer_over_expert_dp():
    """Qwen3-VL-30B-A3B on 16 GPUs, TP1: each rank holds 128 / EP experts of every layer, its
    dense parts whole; the distributed optimizer shards the dense state over DP=16 and the expert
    state over expert-DP = 16 / EP (Megatron's expert-data-parallel group)."""
    from prco_mega.cluster.dims import expert_params, model_dims
    from prco_mega.cluster.memory import stage_expert_params, stage_params

    m = model_dims("qwen3-vl-30b-a3b")
    plans = {ep: plan_memory(PlanInputs(model=m, tp=1, pp=1, dp=16, ep=ep, etp=1,
                                        max_model_len=8192, rollout_tp=4,
                                        rollout_gpu_memory_utilization=0.25)) for ep in (8, 16)}
    lm, vis = stage_params(m, 1, 1, "only")
    for ep, plan in plans.items():
        experts = 48 * (128 // ep) * expert_params(m)
        assert stage_expert_params(m, 1, ep, 1) == experts
        assert _row(plan, "weights").bytes == 2 * (lm + vis + experts)
        assert _row(plan, "optimizer").bytes == pytest.approx(
            12 / 16 * (lm + vis) + 12 / (16 // ep) * experts)
        tokens, k, h = plan.inputs.micro_batch_tokens, 8, 2048
        assert _row(plan, "MoE all-to-all").bytes == 2 * tokens * k * h * 2
    assert _row(plans[16], "weights").bytes < _row(plans[8], "weights").bytes


def test_engine_expert_parallel_holds_whole_experts_and_the_rest_over_tp():
    """vLLM with `engine.enable_expert_parallel`: the dense part / engine TP plus ceil(E / TP)
    whole experts of each MoE layer on the fullest GPU (linear placement). With E divisible by
    TP that is the model / TP, as without it; 60 experts over TP 8 leave 8 on the first GPUs."""
    from prco_mega.cluster.dims import expert_params, model_dims
    from prco_mega.cluster.memory import engine_gpu_params

    m = model_dims("qwen3-vl-30b-a3b")
    base = PlanInputs(model=m, tp=1, pp=1, dp=16, ep=8, etp=1, max_model_len=8192,
                      rollout_tp=4, rollout_gpu_memory_utilization=0.25)
    ep = dataclasses.replace(base, engine_expert_parallel=True)
    plans = {p.engine_expert_parallel: plan_memory(p) for p in (base, ep)}
    weights = {k: next(r for r in p.rollout if r.name.startswith("  vLLM weights"))
               for k, p in plans.items()}
    assert weights[True].bytes == pytest.approx(weights[False].bytes)
    assert "32 of 128 experts per layer whole" in weights[True].note
    odd = dataclasses.replace(ep, model=dataclasses.replace(m, num_experts=60), rollout_tp=8)
    experts = 48 * expert_params(m)
    dense = total_params(odd.model) - 60 * experts
    assert engine_gpu_params(odd) == pytest.approx(dense / 8 + 8 * experts)
    assert engine_gpu_params(dataclasses.replace(odd, engine_expert_parallel=False)) == \
        pytest.approx(total_params(odd.model) / 8)
    cfg = load_yaml(CONFIGS / "qwen3vl_30b_a3b_h100x8.yaml",
                    ["engine.enable_expert_parallel=true"])
    assert plan_inputs_from_config(cfg)[0].engine_expert_parallel


@pytest.mark.parametrize("d", [1, 4])
def test_an_offloaded_optimizer_moves_adam_state_to_the_host(d):
    from prco_mega.cluster.memory import offloaded_optimizer_bytes

    full = optimizer_bytes_per_param(2, 4, True, d)  # 12 / d: master, m, v
    assert offloaded_optimizer_bytes(2, 4, True, d, 0.0, False) == (full, 0.0)
    # precision-aware: nothing of the offloaded share stays; the host holds master, m, v, grad
    assert offloaded_optimizer_bytes(2, 4, True, d, 1.0, True) == (0.0, 16 / d)
    # otherwise the distributed optimizer's fp32 master shard stays on the GPU beside its copy
    assert offloaded_optimizer_bytes(2, 4, True, d, 1.0, False) == (4 / d, 16 / d)
    gpu, host = offloaded_optimizer_bytes(2, 4, True, d, 0.5, True)
    assert (gpu, host) == (pytest.approx(full / 2), pytest.approx(8 / d))


def test_the_one_node_moe_config_fits_only_with_adam_on_the_host():
    from prco_mega.cluster.dims import model_dims, vision_params

    path = str(CONFIGS / "qwen3vl_30b_a3b_h100x8.yaml")
    plan = check_fits(plan_config(path))
    assert _row(plan, "optimizer").bytes == 0
    # the node's host holds 16 B of Adam state for every parameter, the parts TP2 replicates
    # twice: the ViT, and the routers and norms (0.04% of the model)
    m = model_dims("qwen3-vl-30b-a3b")
    host = next(r for r in plan.host if r.name.startswith("learner Adam state"))
    once = 16 * (total_params(m) + vision_params(m.vision))
    assert once < host.bytes < 1.001 * once
    assert plan.host_total < plan.inputs.host_memory_gib * GIB
    on_gpu = plan_config(path, ["learner.optim.cpu_offload=false",
                                "learner.optim.precision_aware=false"])
    assert not on_gpu.fits and not on_gpu.host[:-1]  # only vLLM's sleeping weights on the host
    assert on_gpu.train_total - _row(on_gpu, "activations, recompute=full").bytes > 79.6 * GIB
    small = plan_config(path, ["cluster.host_memory_gib=512"])
    assert any("host memory needs 587.0 GiB per node > cluster.host_memory_gib 512.0" in p
               for p in small.problems)


def test_offload_the_learner_cannot_run_is_refused_by_the_planner():
    path = str(CONFIGS / "qwen3vl_30b_a3b_h100x8.yaml")
    with pytest.raises(ValueError, match=r"cpu_offload \(True\) needs learner.precision bf16"):
        plan_config(path, ["learner.precision=fp32"])
    with pytest.raises(ValueError, match=r"offload_fraction \(1.5\) must be in \(0, 1\]"):
        plan_config(path, ["learner.optim.offload_fraction=1.5"])
