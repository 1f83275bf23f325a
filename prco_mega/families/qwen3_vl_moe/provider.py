"""Model provider for Qwen3-VL-MoE: Qwen3-VL (`families/qwen3_vl/provider.py`: its ViT, deepstack,
interleaved MRoPE and QK-norm, used as they are) with every decoder layer's MLP a Megatron
mixture-of-experts layer.

- Router: Qwen3's. Softmax over the experts, the top k kept and renormalised to sum to 1
  (`norm_topk_prob`); Megatron's softmax over the top-k logits (`moe_router_pre_softmax=False`)
  is the same function. No shared expert, no expert bias, no capacity: no token is dropped.
- Experts: SwiGLU MLPs of width `moe_intermediate_size`, split over the expert-parallel group
  (each rank holds `num_experts / EP` of them) and each over the expert-TP group. Without
  Transformer Engine (CPU) they run one after another (`SequentialMLP`, local spec); with it as
  one grouped GEMM (`TEGroupedMLP`, TE spec). Tokens reach their experts through the alltoall
  dispatcher (the expert-parallel sizes come from the process groups the model is built with).
- Load balancing and z-loss: off unless `config_overrides` sets them (the learner's
  `LearnerConfig.moe`): an RL update should move the policy only by its reward signal.

transformers' and vLLM's Qwen3-VL-MoE always renormalise the top-k weights; a config with
`norm_topk_prob: false` is refused (vLLM would not renormalise it: the engines would disagree).
"""
from __future__ import annotations

import copy
import dataclasses

import torch

from prco_mega.families.qwen3_vl.provider import (Qwen3VisionTower, Qwen3VLModel,
                                                  first_stage_layers, qwen3vl_transformer_config)
from prco_mega.learner.layout import check_deepstack_placement
from prco_mega.learner.model import build_chunks, resolve_use_te, text_config
# after learner.model, which makes torchvision importable before Megatron's HF module loads
from megatron.core.transformer.transformer_config import TransformerConfig  # noqa: E402


def check_moe_config(hf_config) -> None:
    """ValueError for a Qwen3-VL-MoE config this provider does not build exactly: dense MLP
    layers between the MoE ones, or a top-k that is not renormalised."""
    tc = text_config(hf_config)
    step, dense = getattr(tc, "decoder_sparse_step", 1), list(getattr(tc, "mlp_only_layers", []))
    if step != 1 or dense:
        raise ValueError(f"Qwen3-VL-MoE with dense MLP layers (decoder_sparse_step {step}, "
                         f"mlp_only_layers {dense}) is not supported: every layer must be MoE")
    if getattr(tc, "norm_topk_prob", True) is False:
        raise ValueError("norm_topk_prob is false: transformers renormalises the top-k routing "
                         "weights anyway and vLLM does not, so the engine and the learner would "
                         "compute different models; set it to true")


def qwen3vl_moe_transformer_config(hf_config, *, ep: int = 1, etp: int | None = None,
                                   use_te: bool = False, **kwargs) -> TransformerConfig:
    """Qwen3-VL's `TransformerConfig` with the experts of `hf_config` at expert parallel `ep` and
    expert tensor parallel `etp` (None: Megatron's default, the TP size)."""
    check_moe_config(hf_config)
    tc = text_config(hf_config)
    moe = dict(
        num_moe_experts=tc.num_experts, moe_ffn_hidden_size=tc.moe_intermediate_size,
        moe_router_topk=tc.num_experts_per_tok, moe_router_score_function="softmax",
        moe_router_pre_softmax=False, moe_router_load_balancing_type="none",
        moe_aux_loss_coeff=0.0, moe_z_loss_coeff=None, moe_token_dispatcher_type="alltoall",
        moe_grouped_gemm=use_te, moe_permute_fusion=False,
        expert_model_parallel_size=ep, expert_tensor_parallel_size=etp)
    return qwen3vl_transformer_config(hf_config, **{**moe, **kwargs})


class Qwen3VLMoeVisionTower(Qwen3VisionTower):
    """Qwen3-VL's tower: the MoE checkpoints' ViT is Qwen3-VL's. transformers stamps its experts
    implementation on every sub-config of a MoE model, which the dense ViT class refuses; the
    tower gets a copy without it."""

    def __init__(self, config: TransformerConfig, vision_config, seed: int = 0):
        vision_config = copy.deepcopy(vision_config)
        vision_config._experts_implementation = None
        super().__init__(config, vision_config, seed)


class Qwen3VLMoeModel(Qwen3VLModel):
    """One pipeline chunk of Qwen3-VL-MoE: Qwen3-VL's chunk with MoE decoder layers."""

    vision_tower_cls = Qwen3VLMoeVisionTower

    @staticmethod
    def layer_specs(config: TransformerConfig, use_te: bool, vp_stage: int | None, pp_rank: int):
        """Qwen3-VL's specs (QK-norm, our RMSNorm and SDPA without TE) with a MoE layer as MLP."""
        from megatron.core.models.gpt import gpt_layer_specs as specs
        from megatron.core.models.gpt.moe_module_specs import get_moe_module_spec

        if use_te:
            return specs.get_gpt_layer_with_transformer_engine_spec(
                num_experts=config.num_moe_experts, moe_grouped_gemm=True, qk_layernorm=True)
        block = Qwen3VLModel.layer_specs(config, False, vp_stage, pp_rank)
        moe = get_moe_module_spec(use_te=False, num_experts=config.num_moe_experts,
                                  moe_grouped_gemm=False)
        layers = [dataclasses.replace(layer, submodules=dataclasses.replace(
            layer.submodules, mlp=moe)) for layer in block.layer_specs]
        return dataclasses.replace(block, layer_specs=layers)


def build_qwen3vl_moe_model(hf_config, pg_collection, *, pre_process: bool | None = None,
                            post_process: bool | None = None, freeze_vision: bool = False,
                            vpp: int | None = None, use_te: bool | None = None,
                            params_dtype: torch.dtype = torch.float32,
                            config_overrides: dict | None = None) -> list[Qwen3VLMoeModel]:
    """Model chunks of this rank (arguments: `families.spec.Family.build_model`; the expert
    layout is that of `pg_collection`'s `ep` and `expt_tp` groups), after refusing deepstack
    layers off the first stage."""
    use_te = resolve_use_te(use_te)
    config = qwen3vl_moe_transformer_config(
        hf_config, ep=pg_collection.ep.size(), etp=pg_collection.expt_tp.size(), use_te=use_te,
        tp=pg_collection.tp.size(), pp=pg_collection.pp.size(), vpp=vpp,
        params_dtype=params_dtype, **(config_overrides or {}))
    check_deepstack_placement(len(hf_config.vision_config.deepstack_visual_indexes),
                              first_stage_layers(config), config.num_layers,
                              pg_collection.pp.size(), vpp)
    return build_chunks(Qwen3VLMoeModel, config, hf_config, pg_collection, pre_process=pre_process,
                        post_process=post_process, freeze_vision=freeze_vision, vpp=vpp,
                        use_te=use_te)
