"""The tiny Qwen3-VL-MoE used on CPU: the tiny Qwen3-VL (`families/qwen3_vl/tiny.py`: GQA,
QK-norm, interleaved MRoPE, deepstack, its ViT) with every MLP a mixture of 8 experts, 2 per token,
as the published Qwen3-VL-30B-A3B and 235B-A22B have them (128 experts, 8 per token).

Saved (`tiny.checkpoint.make_tiny_checkpoint`, through `bridge.hf_io.save_pretrained_hub`) in the
hub's fused expert layout, the one the published checkpoints hold and vLLM loads, at sizes that keep that layout distinguishable from transformers'
(hidden 128 is neither moe_intermediate 32 nor twice it, `bridge.mapping.fused_layout`), with
hidden % 32 == 0 (vLLM's CPU MoE kernel) and `norm_topk_prob: true` in the text config (vLLM
reads it; transformers renormalises in any case).
"""
from __future__ import annotations

from dataclasses import dataclass

from prco_mega.families.qwen2_5_vl.tiny import SpecialTokenIds
from prco_mega.families.qwen3_vl.tiny import TinyQwen3VLSizes, tiny_qwen3vl_config

_TOP_LEVEL = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
              "tie_word_embeddings")
_NOT_CARRIED = ("model_type", "architectures", "transformers_version", "dtype")


@dataclass(frozen=True)
class TinyQwen3VLMoeSizes(TinyQwen3VLSizes):
    """The tiny Qwen3-VL's sizes and its experts. Defaults divide by TP=2, PP=2 and EP=2 (and
    expert-TP 2: 32 / 2); PP=2 keeps both deepstack layers on the first stage."""

    num_experts: int = 8
    """Routed experts per layer (Qwen3-VL-30B-A3B: 128)."""
    experts_per_token: int = 2
    """Top-k of the router (Qwen3-VL-30B-A3B: 8)."""
    moe_intermediate_size: int = 32
    """Width of each expert's SwiGLU (Qwen3-VL-30B-A3B: 768 of hidden 2048)."""


def tiny_qwen3vl_moe_config(sizes: TinyQwen3VLMoeSizes = TinyQwen3VLMoeSizes(),
                            special: SpecialTokenIds | None = None):
    """A `Qwen3VLMoeConfig`: the tiny Qwen3-VL's config with experts in every layer."""
    dense = tiny_qwen3vl_config(sizes, special).to_dict()  # makes torchvision importable first
    from transformers import Qwen3VLMoeConfig

    text = {k: v for k, v in dense["text_config"].items() if k not in _NOT_CARRIED}
    text.update(num_experts=sizes.num_experts, num_experts_per_tok=sizes.experts_per_token,
                moe_intermediate_size=sizes.moe_intermediate_size, norm_topk_prob=True,
                decoder_sparse_step=1, mlp_only_layers=[])
    vision = {k: v for k, v in dense["vision_config"].items() if k not in _NOT_CARRIED}
    return Qwen3VLMoeConfig(text_config=text, vision_config=vision,
                            **{k: dense[k] for k in _TOP_LEVEL}, **sizes.extra)


def build_tiny_qwen3vl_moe(config, seed: int = 0, init_std: float = 0.02):
    """Random-weight `Qwen3VLMoeForConditionalGeneration` in fp32, deterministic in `seed`, its
    norms perturbed away from ones (a mapping that dropped or swapped one changes the outputs)."""
    import torch

    from prco_mega.platform.cpu_torchvision import ensure_torchvision_importable

    ensure_torchvision_importable()
    from transformers import Qwen3VLMoeForConditionalGeneration

    config.text_config.initializer_range = init_std
    config.vision_config.initializer_range = init_std
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLMoeForConditionalGeneration(config).to(torch.float32).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("norm.weight", "norm1.weight", "norm2.weight")):
                    p.add_(0.1 * torch.randn_like(p))
    return model

