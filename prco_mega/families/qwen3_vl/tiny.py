"""The tiny Qwen3-VL used on CPU: the real architecture (GQA, QK-norm, SwiGLU, RMSNorm, interleaved
MRoPE, deepstack; ViT with patch 16, learned position embeddings resampled bilinearly, LayerNorm,
tanh-GELU, no window attention) at sizes that run in seconds on two cores.

Like the tiny Qwen2.5-VL (`families/qwen2_5_vl/tiny.py`) it is built with random weights through
transformers' own `qwen3_vl` classes and saved as a normal Hugging Face checkpoint that Megatron,
vLLM and transformers all load; torch and transformers are imported by the functions that build
(the family registry, which the planner reads, imports this module).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prco_mega.families.qwen2_5_vl.tiny import SpecialTokenIds


@dataclass(frozen=True)
class TinyQwen3VLSizes:
    """Sizes of the tiny Qwen3-VL. Defaults divide by TP=2 and PP=2 (heads, KV heads, layers,
    vocab), and PP=2 keeps every deepstack layer on the first stage (2 levels, 2 layers there).

    head_dim = 32: vLLM's CPU attention has kernels for head_dim 32, 64, 80 and up.
    """

    vocab_size: int = 512
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    mrope_section: tuple[int, int, int] = (6, 5, 5)
    """Rotary half-dims (temporal, height, width), interleaved; must sum to head_dim / 2 = 16
    (Qwen3-VL-8B: (24, 20, 20) of 64)."""
    rope_theta: float = 5_000_000.0
    vision_depth: int = 2
    vision_hidden: int = 32
    vision_heads: int = 2
    vision_intermediate: int = 64
    deepstack_visual_indexes: tuple[int, ...] = (0, 1)
    """ViT blocks whose features are merged and added after decoder layers 0, 1, ..."""
    num_position_embeddings: int = 64
    """Learned ViT position grid (8 x 8), resampled bilinearly to each image's patch grid."""
    tie_word_embeddings: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def tiny_qwen3vl_config(sizes: TinyQwen3VLSizes = TinyQwen3VLSizes(),
                        special: SpecialTokenIds | None = None):
    """A `Qwen3VLConfig` with tiny sizes; `special` defaults to the last seven vocab ids."""
    from prco_mega.platform.cpu_torchvision import ensure_torchvision_importable

    ensure_torchvision_importable()
    from transformers import Qwen3VLConfig

    special = special or SpecialTokenIds.at_end(sizes.vocab_size)
    text = dict(
        vocab_size=sizes.vocab_size, hidden_size=sizes.hidden_size,
        intermediate_size=sizes.intermediate_size, num_hidden_layers=sizes.num_layers,
        num_attention_heads=sizes.num_heads, num_key_value_heads=sizes.num_kv_heads,
        head_dim=sizes.head_dim, max_position_embeddings=4096, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": sizes.rope_theta,
                         "mrope_section": list(sizes.mrope_section), "mrope_interleaved": True},
        bos_token_id=special.endoftext, eos_token_id=special.im_end,
        pad_token_id=special.endoftext,
    )
    vision = dict(
        depth=sizes.vision_depth, hidden_size=sizes.vision_hidden, num_heads=sizes.vision_heads,
        intermediate_size=sizes.vision_intermediate, out_hidden_size=sizes.hidden_size,
        patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
        num_position_embeddings=sizes.num_position_embeddings,
        deepstack_visual_indexes=list(sizes.deepstack_visual_indexes),
    )
    return Qwen3VLConfig(
        text_config=text, vision_config=vision, image_token_id=special.image_pad,
        video_token_id=special.video_pad, vision_start_token_id=special.vision_start,
        vision_end_token_id=special.vision_end, tie_word_embeddings=sizes.tie_word_embeddings,
        **sizes.extra)


def build_tiny_qwen3vl(config, seed: int = 0, init_std: float = 0.02):
    """Random-weight `Qwen3VLForConditionalGeneration` in fp32, deterministic in `seed`.

    transformers initialises the QK-norm and layer norms to ones; they are perturbed here so that a
    mapping that dropped or swapped them would change the outputs."""
    import torch

    from prco_mega.platform.cpu_torchvision import ensure_torchvision_importable

    ensure_torchvision_importable()
    from transformers import Qwen3VLForConditionalGeneration

    config.text_config.initializer_range = init_std
    config.vision_config.initializer_range = init_std
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config).to(torch.float32).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("norm.weight", "norm1.weight", "norm2.weight")):
                    p.add_(0.1 * torch.randn_like(p))
    return model


def save_qwen3vl_processor(out_dir: str | Path, tokenizer, chat_template: str,
                           min_pixels: int = 32 * 32, max_pixels: int = 32 * 32 * 64) -> Path:
    """Write Qwen3-VL's image processor (patch 16, merge 2: one token per 32 x 32 pixels), video
    processor and processor config into `out_dir`."""
    from prco_mega.platform.cpu_torchvision import ensure_torchvision_importable

    ensure_torchvision_importable()
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    stats = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, patch_size=16, merge_size=2, **stats),
        video_processor=Qwen3VLVideoProcessor(size=size, patch_size=16, merge_size=2, **stats),
        tokenizer=tokenizer, chat_template=chat_template)
    processor.save_pretrained(out_dir)
    return Path(out_dir)
