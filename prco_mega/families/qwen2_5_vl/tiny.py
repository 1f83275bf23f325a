"""The tiny Qwen2.5-VL used on CPU: the real architecture (GQA, QKV bias, SwiGLU, RMSNorm, mrope,
windowed ViT with patch merger) at sizes that train in minutes on two cores.

No pretrained weights exist on CPU machines, so tests and the tiny run build this model with random
weights through transformers and save it as a normal Hugging Face checkpoint that Megatron, vLLM
and transformers all load. The family registry, which the planner and config loading read, imports
this module: torch and transformers are imported by the functions that build.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SpecialTokenIds:
    """Ids of Qwen2.5-VL's special tokens in a vocabulary (the tokenizer decides them)."""

    endoftext: int
    im_start: int
    im_end: int
    vision_start: int
    vision_end: int
    image_pad: int
    video_pad: int

    @classmethod
    def at_end(cls, vocab_size: int) -> SpecialTokenIds:
        """Specials on the last seven ids: the layout of a tokenizer without its own opinion."""
        base = vocab_size - 7
        return cls(*range(base, base + 7))


@dataclass(frozen=True)
class TinySizes:
    """Sizes of the tiny model. Defaults divide by TP=2 and PP=2 (heads, KV heads, layers, vocab).

    head_dim = hidden_size / num_heads = 32: vLLM's CPU attention has kernels only for head_dim
    32, 64, 80 and up, so 16 would train but could not be served.
    """

    vocab_size: int = 512
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    mrope_section: tuple[int, int, int] = (4, 6, 6)
    """Rotary half-dims for (temporal, height, width); must sum to head_dim / 2 = 16."""
    vision_depth: int = 2
    vision_hidden: int = 32
    vision_heads: int = 2
    vision_intermediate: int = 64
    vision_fullatt_blocks: tuple[int, ...] = (1,)
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    extra: dict[str, Any] = field(default_factory=dict)


def tiny_qwen25vl_config(sizes: TinySizes = TinySizes(), special: SpecialTokenIds | None = None):
    """A `Qwen2_5_VLConfig` with tiny sizes; `special` defaults to the last seven vocab ids."""
    from prco_mega.platform.cpu_torchvision import ensure_torchvision_importable

    ensure_torchvision_importable()
    from transformers import Qwen2_5_VLConfig

    special = special or SpecialTokenIds.at_end(sizes.vocab_size)
    text = dict(
        vocab_size=sizes.vocab_size,
        hidden_size=sizes.hidden_size,
        intermediate_size=sizes.intermediate_size,
        num_hidden_layers=sizes.num_layers,
        num_attention_heads=sizes.num_heads,
        num_key_value_heads=sizes.num_kv_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": sizes.rope_theta,
                         "mrope_section": list(sizes.mrope_section)},
        bos_token_id=special.endoftext,
        eos_token_id=special.im_end,
        pad_token_id=special.endoftext,
    )
    vision = dict(
        depth=sizes.vision_depth,
        hidden_size=sizes.vision_hidden,
        num_heads=sizes.vision_heads,
        intermediate_size=sizes.vision_intermediate,
        out_hidden_size=sizes.hidden_size,
        fullatt_block_indexes=list(sizes.vision_fullatt_blocks),
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=special.image_pad,
        video_token_id=special.video_pad,
        vision_start_token_id=special.vision_start,
        vision_end_token_id=special.vision_end,
        tie_word_embeddings=sizes.tie_word_embeddings,
        **sizes.extra,
    )


def build_tiny_qwen25vl(config, seed: int = 0, init_std: float = 0.02):
    """Random-weight `Qwen2_5_VLForConditionalGeneration` in fp32, deterministic in `seed`."""
    import torch

    from prco_mega.platform.cpu_torchvision import ensure_torchvision_importable

    ensure_torchvision_importable()
    from transformers import Qwen2_5_VLForConditionalGeneration

    config.text_config.initializer_range = init_std
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    return model


def save_qwen25vl_processor(out_dir: str | Path, tokenizer, chat_template: str,
                            min_pixels: int = 28 * 28, max_pixels: int = 28 * 28 * 64) -> Path:
    """Write Qwen2.5-VL's image processor, video processor and processor config into `out_dir`.

    Images are resized so that their pixel count lies in [min_pixels, max_pixels] (multiples of
    28x28 = one merged token each).
    """
    from prco_mega.platform.cpu_torchvision import ensure_torchvision_importable

    ensure_torchvision_importable()
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    pixels = dict(min_pixels=min_pixels, max_pixels=max_pixels)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer, chat_template=chat_template)
    processor.save_pretrained(out_dir)
    return Path(out_dir)
