"""Model provider for Qwen3-VL (dense): the shared vision-language chunk (`learner.model`) with
Qwen3-VL's differences, as a `VisionLanguageModel` subclass so every caller (forward, unwrap,
bridge) takes it as is.

- Decoder: Megatron `GPTModel` with QK-norm (per-head RMSNorm on q and k before the rotary, our
  `RMSNorm` in the local spec, TE's in the TE spec; Megatron sums its gradient over TP because
  `qk_layernorm` is set), no QKV bias, and interleaved MRoPE (`InterleavedMRoPE` replaces the GPT
  model's rotary module; Megatron then applies the angles as for any mrope).
- Vision tower: Hugging Face's `Qwen3VLVisionModel` (patch 16, learned position grid resampled
  bilinearly, LayerNorm, tanh-GELU, no window attention) wrapped like Qwen2.5-VL's: first pipeline
  stage only, replicated over TP. It returns the merged features and one feature set per
  deepstack level.
- Deepstack: forward hooks on decoder layers 0..L-1 add level l's features at the image tokens
  (`parts.add_deepstack`), on the sequence slice of this rank under sequence parallelism.
  The layers must be on the first pipeline stage (`layout.check_deepstack_placement`, a
  ValueError with the numbers). A micro-batch without images has no features and the hooks add
  nothing.

Activation recompute (`recompute_granularity="full"`) re-runs the layers during the backward,
after this chunk's forward returned and possibly after later micro-batches' forwards (1F1B): the
hooks therefore find a micro-batch's features by the storage of its rotary angles, the one tensor
that Megatron's checkpoint hands back to the re-run unchanged, and the re-run adds detached
copies whose gradients `_RouteDeepstackGrads` passes on to the ViT.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict

import torch

from prco_mega.learner.model import (RMSNorm, VisionLanguageModel, build_chunks, decoder_spec,
                                     merge_image_features, resolve_use_te, rope_settings,
                                     transformer_config_from_hf)
# after learner.model, which makes torchvision importable before Megatron's HF module loads
from megatron.core.models.huggingface.module import HuggingFaceModule  # noqa: E402
from megatron.core.transformer.transformer_config import TransformerConfig  # noqa: E402
from prco_mega.learner.layout import check_deepstack_placement
from prco_mega.families.qwen3_vl.parts import add_deepstack, interleaved_mrope_freqs


def qwen3vl_transformer_config(hf_config, **kwargs) -> TransformerConfig:
    """`transformer_config_from_hf` with Qwen3-VL's attention: QK-norm, QKV bias as the config
    says (none in the released models)."""
    bias = bool(getattr(hf_config.text_config, "attention_bias", False))
    return transformer_config_from_hf(hf_config, **{"qk_layernorm": True,
                                                    "add_qkv_bias": bias, **kwargs})


class InterleavedMRoPE(torch.nn.Module):
    """Drop-in for Megatron's `MultimodalRotaryEmbedding` with Qwen3-VL's interleaved axes."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor, mrope_section: list[int],
                cp_group=None) -> torch.Tensor:
        """[3, B, S] positions -> [S, B, 1, D] angles."""
        if cp_group is not None and cp_group.size() > 1:
            raise ValueError("Qwen3-VL's interleaved MRoPE does not support context parallelism")
        return interleaved_mrope_freqs(position_ids.to(self.inv_freq.device), self.inv_freq,
                                       list(mrope_section))


class Qwen3VisionTower(HuggingFaceModule):
    """Hugging Face's Qwen3-VL ViT + merger + deepstack mergers as a Megatron module, replicated
    over TP (`HuggingFaceModule` averages its gradients over TP)."""

    def __init__(self, config: TransformerConfig, vision_config, seed: int = 0):
        super().__init__(config)
        from transformers.models.qwen3_vl import modeling_qwen3_vl as hf

        with torch.random.fork_rng(devices=[]):  # identical init on every TP rank
            torch.manual_seed(seed)
            model = hf.Qwen3VLVisionModel._from_config(vision_config)
        self.model = model.to(config.params_dtype)
        self.spatial_merge_size = vision_config.spatial_merge_size

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor):
        """[P, C*T*ps*ps] patches, [K, 3] grids -> (merged [N, H_text], [N, H_text] per level)."""
        out = self.model(pixel_values.to(self.config.params_dtype), grid_thw=grid_thw)
        return out.pooler_output, list(out.deepstack_features)


@dataclasses.dataclass
class _Deepstack:
    """One micro-batch's deepstack inputs."""

    mask_BS: torch.Tensor
    """[B, S] image-token positions."""
    feats: list[torch.Tensor]
    """Per level: [N, H] features in batch-major token order."""
    leaves: list[torch.Tensor] | None = None
    """Full recompute: detached copies the re-run layers add, so their gradients stop there
    (`_RouteDeepstackGrads` hands them on to `feats` in the outer backward)."""


class _RouteDeepstackGrads(torch.autograd.Function):
    """Identity on the decoder input whose backward also returns the deepstack leaves' gradients
    as the features' gradients.

    Under full recompute the deepstack layers re-run inside Megatron's checkpoint backward, where a
    feature tensor from outside the checkpoint would be back-propagated into the ViT once per
    layer (and fail the second time). The re-run adds detached leaves instead; their gradients are
    complete before the backward reaches the decoder input, and flow into the ViT from here, once,
    with the embeddings'."""

    @staticmethod
    def forward(ctx, emb, ds: _Deepstack, *feats):
        ctx.ds = ds
        return emb.clone()

    @staticmethod
    def backward(ctx, grad):
        leaves = ctx.ds.leaves
        return (grad, None, *[torch.zeros_like(x) if x.grad is None else x.grad for x in leaves])


class Qwen3VLModel(VisionLanguageModel):
    """One pipeline chunk of Qwen3-VL: optional vision tower + a `GPTModel` chunk with deepstack."""

    vision_tower_cls = Qwen3VisionTower

    @staticmethod
    def layer_specs(config: TransformerConfig, use_te: bool, vp_stage: int | None, pp_rank: int):
        """The shared specs with QK-norm: TE's own, or our `RMSNorm` on the head dim."""
        if use_te:
            from megatron.core.models.gpt import gpt_layer_specs as specs

            return specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True)
        block = decoder_spec(config, False, vp_stage, pp_rank)
        layer = block.layer_specs[0] if block.layer_specs else None
        if layer is None:
            return block
        attn = layer.submodules.self_attention
        attn = dataclasses.replace(attn, submodules=dataclasses.replace(
            attn.submodules, q_layernorm=RMSNorm, k_layernorm=RMSNorm))
        layer = dataclasses.replace(layer, submodules=dataclasses.replace(
            layer.submodules, self_attention=attn))
        return dataclasses.replace(block, layer_specs=[layer] * len(block.layer_specs))

    def __init__(self, config: TransformerConfig, hf_config, *, pg_collection, pre_process: bool,
                 post_process: bool, vp_stage: int | None = None, use_te: bool = False,
                 freeze_vision: bool = False):
        super().__init__(config, hf_config, pg_collection=pg_collection, pre_process=pre_process,
                         post_process=post_process, vp_stage=vp_stage, use_te=use_te,
                         freeze_vision=freeze_vision)
        theta, _ = rope_settings(hf_config)
        self.language_model.rotary_pos_emb = InterleavedMRoPE(config.kv_channels, theta)
        self.levels = len(hf_config.vision_config.deepstack_visual_indexes)
        self._current: _Deepstack | None = None
        self._in_forward = False
        # recompute: micro-batch features by rotary storage, bounded by the in-flight micro-batches
        self._by_rotary: OrderedDict[int, _Deepstack | None] = OrderedDict()
        self._keep = 4 * pg_collection.pp.size() * (config.virtual_pipeline_model_parallel_size
                                                    or 1) + 4
        if pre_process:
            layers = self.language_model.decoder.layers
            for level in range(min(self.levels, len(layers))):
                layers[level].register_forward_hook(self._deepstack_hook(level), with_kwargs=True)

    def forward(self, input_ids, position_ids, attention_mask=None, pixel_values=None,
                image_grid_thw=None, packed_seq_params=None, labels=None, loss_mask=None,
                return_hidden: bool = False):
        self._in_forward = True
        try:
            return super().forward(input_ids, position_ids, attention_mask, pixel_values,
                                   image_grid_thw, packed_seq_params, labels, loss_mask,
                                   return_hidden)
        finally:
            self._in_forward, self._current = False, None

    def _embed(self, input_ids, pixel_values, image_grid_thw) -> torch.Tensor:
        from megatron.core import tensor_parallel

        emb = self.language_model.embedding(input_ids=input_ids, position_ids=None)  # [S, B, H]
        mask_BS = input_ids == self.image_token_id
        self._current = None
        if bool(mask_BS.any()):
            if pixel_values is None or self.vision is None:
                raise ValueError("batch has image tokens but no pixel_values / vision tower")
            merged, levels = self.vision(pixel_values, image_grid_thw)
            emb = merge_image_features(emb, input_ids, merged, self.image_token_id)
            if self.config.sequence_parallel:
                # each TP rank adds only its sequence slice: sum the features' gradients over TP
                levels = [tensor_parallel.copy_to_tensor_model_parallel_region(
                    f, group=self.tp_group) for f in levels]
            self._current = _Deepstack(mask_BS, levels)
            if self.config.recompute_granularity == "full" and torch.is_grad_enabled() and any(
                    f.requires_grad for f in levels):
                self._current.leaves = [f.detach().requires_grad_() for f in levels]
                emb = _RouteDeepstackGrads.apply(emb, self._current, *levels)
        elif self.vision is not None and torch.is_grad_enabled():
            emb = emb + self._zero_vision_term()
        if self.config.sequence_parallel:
            emb = tensor_parallel.scatter_to_sequence_parallel_region(emb, group=self.tp_group)
        return emb

    def _deepstack_for(self, rotary: torch.Tensor | None) -> _Deepstack | None:
        """This micro-batch's features: the current forward's, or (recompute) the ones recorded
        under its rotary angles."""
        key = rotary.data_ptr() if rotary is not None else None
        if self._in_forward:
            # (Megatron's checkpoint runs the first pass under no_grad: record in any mode)
            if key is not None and self.config.recompute_granularity == "full":
                self._by_rotary[key] = self._current
                self._by_rotary.move_to_end(key)
                while len(self._by_rotary) > self._keep:
                    self._by_rotary.popitem(last=False)
            return self._current
        if key not in self._by_rotary:
            raise RuntimeError("deepstack: a recomputed layer found no features of its micro-batch")
        return self._by_rotary[key]

    def _deepstack_hook(self, level: int):
        def hook(_module, args, kwargs, output):
            ds = self._deepstack_for(kwargs.get("rotary_pos_emb"))
            if ds is None:
                return output
            hidden, context = output
            feats = ds.feats if self._in_forward or ds.leaves is None else ds.leaves
            offset = 0
            if self.config.sequence_parallel:
                offset = self.tp_group.rank() * hidden.shape[0]
            return add_deepstack(hidden, ds.mask_BS, feats[level], offset), context

        return hook


def first_stage_layers(config: TransformerConfig) -> int:
    """Decoder layers on the first pipeline stage (its first virtual chunk)."""
    from megatron.core.transformer.transformer_block import get_num_layers_to_build

    vp = 0 if config.virtual_pipeline_model_parallel_size else None
    return get_num_layers_to_build(config, vp_stage=vp, pp_rank=0)


def build_qwen3vl_model(hf_config, pg_collection, *, pre_process: bool | None = None,
                        post_process: bool | None = None, freeze_vision: bool = False,
                        vpp: int | None = None, use_te: bool | None = None,
                        params_dtype: torch.dtype = torch.float32,
                        config_overrides: dict | None = None) -> list[Qwen3VLModel]:
    """Model chunks of this rank (arguments: `families.spec.Family.build_model`), after refusing
    deepstack layers off the first stage."""
    use_te = resolve_use_te(use_te)
    config = qwen3vl_transformer_config(
        hf_config, tp=pg_collection.tp.size(), pp=pg_collection.pp.size(), vpp=vpp,
        params_dtype=params_dtype, **(config_overrides or {}))
    check_deepstack_placement(len(hf_config.vision_config.deepstack_visual_indexes),
                              first_stage_layers(config), config.num_layers,
                              pg_collection.pp.size(), vpp)
    return build_chunks(Qwen3VLModel, config, hf_config, pg_collection, pre_process=pre_process,
                        post_process=post_process, freeze_vision=freeze_vision, vpp=vpp,
                        use_te=use_te)
