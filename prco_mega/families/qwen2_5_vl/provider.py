"""Model provider for Qwen2.5-VL: the shared vision-language chunk (`learner.model`) with Hugging
Face's Qwen2.5-VL vision tower (windowed ViT + patch merger) and the Qwen2 decoder exactly as the
shared machinery builds it (QKV bias, contiguous mrope sections)."""
from __future__ import annotations

import torch

from prco_mega.learner.model import (VisionLanguageModel, build_chunks, resolve_use_te,
                                     transformer_config_from_hf)
# after learner.model, which makes torchvision importable before Megatron's HF module loads
from megatron.core.models.huggingface.module import HuggingFaceModule  # noqa: E402
from megatron.core.transformer.transformer_config import TransformerConfig  # noqa: E402


class Qwen25VisionTower(HuggingFaceModule):
    """Hugging Face's Qwen2.5-VL ViT + patch merger as a Megatron module, replicated over TP.

    `HuggingFaceModule` marks every parameter `average_gradients_across_tp_domain`, so the TP
    replicas stay identical even if the HF kernels are not bit-deterministic.
    """

    def __init__(self, config: TransformerConfig, vision_config, seed: int = 0):
        super().__init__(config)
        from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as hf

        with torch.random.fork_rng(devices=[]):  # identical init on every TP rank
            torch.manual_seed(seed)
            model = hf.Qwen2_5_VisionTransformerPretrainedModel._from_config(vision_config)
        self.model = model.to(config.params_dtype)
        self.spatial_merge_size = vision_config.spatial_merge_size

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """[P, C*T*ps*ps] patches, [K, 3] grids -> [sum_k t*h*w/m^2, H_text] merged features."""
        out = self.model(pixel_values.to(self.config.params_dtype), grid_thw=grid_thw)
        return out.pooler_output


class Qwen25VLModel(VisionLanguageModel):
    """One pipeline chunk of Qwen2.5-VL: optional vision tower + a `GPTModel` chunk."""

    vision_tower_cls = Qwen25VisionTower


def build_qwen25vl_model(hf_config, pg_collection, *, pre_process: bool | None = None,
                         post_process: bool | None = None, freeze_vision: bool = False,
                         vpp: int | None = None, use_te: bool | None = None,
                         params_dtype: torch.dtype = torch.float32,
                         config_overrides: dict | None = None) -> list[Qwen25VLModel]:
    """Model chunks of this rank (one per virtual pipeline stage), on the current device.

    `pre_process`/`post_process` default to "first/last pipeline stage" per chunk. `use_te=None`
    picks Transformer Engine when it imports; `True` without TE raises.
    """
    use_te = resolve_use_te(use_te)
    config = transformer_config_from_hf(
        hf_config, tp=pg_collection.tp.size(), pp=pg_collection.pp.size(), vpp=vpp,
        params_dtype=params_dtype, **(config_overrides or {}))
    return build_chunks(Qwen25VLModel, config, hf_config, pg_collection, pre_process=pre_process,
                        post_process=post_process, freeze_vision=freeze_vision, vpp=vpp,
                        use_te=use_te)
