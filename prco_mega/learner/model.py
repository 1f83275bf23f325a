"""What every model family's Megatron provider shares: a Qwen-style vision-language model chunk
built from a Hugging Face config.

`VisionLanguageModel` = a family's vision tower (first pipeline stage only, replicated over TP,
optionally frozen) + a Megatron-Core `GPTModel` with Qwen2 settings (RMSNorm, SwiGLU, QKV bias,
GQA, mrope with 3-D positions, tied or untied embeddings as the checkpoint says). Image features
replace the embeddings at the image-pad tokens before the decoder; with sequence parallelism the
merged embeddings are then scattered over TP. Each family's `provider.py`
(`prco_mega/families/<family>/`) subclasses it with its tower and decoder layers, and builds its
chunks with `transformer_config_from_hf` and `build_chunks`; `learner.provider.build_model`
chooses the family by `model_type`.

API for training code:
- `learner.provider.build_model(hf_config, pg_collection, *, pre_process=None,
  post_process=None, freeze_vision=False, vpp=None, use_te=None, params_dtype=torch.float32,
  config_overrides=None) -> list[VisionLanguageModel]`: one model chunk per virtual pipeline
  stage (one item without VPP). Parameters of chunk i are named as in `VisionLanguageModel`
  (`language_model.decoder.layers.{j}...`, `vision.model.blocks.{j}...`); `prco_mega.bridge.mapping`
  maps them to Hugging Face names.
- `forward(model, tokens, position_ids, pixel_values=None, image_grid_thw=None, *,
  packed_seq_params=None, attention_mask=None, return_hidden=False)`: returns vocab-parallel
  logits [B, S, V/TP] on the last pipeline stage, the hidden states [S, B, H] elsewhere (what
  Megatron's schedules send on). With `return_hidden=True` the last stage skips the output layer
  and returns `(final-norm hidden states [S, B, H] (gathered over TP under sequence parallelism),
  output weight shard [V/TP, H])` for the fused Triton loss head (`learner/loss_head.py`).
  `tokens` [B, S]; `position_ids` [3, B, S] from `prco_mega.learner.mrope`; `pixel_values`
  [P, C*T*ps*ps] and `image_grid_thw` [K, 3] as the HF processor makes them (first stage only).

Packed sequences: pass `tokens` [1, T] (sequences back to back), `position_ids` [3, 1, T] from
`mrope.packed_mrope_position_ids` (each sequence restarts at 0) and
`packed_seq_params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
max_seqlen_q=m, max_seqlen_kv=m)` with `cu` [N+1] int32. With Transformer Engine the THD path
runs as is (rotary applied per token; `apply_rope_fusion` stays off because mrope frequencies are
per token). Megatron's local attention (no TE: CPU) refuses `packed_seq_params`, so `forward`
turns it into the equivalent block-diagonal causal `attention_mask` [1, 1, T, T]; the local
spec's core attention (`attention.SdpaDotProductAttention`) finds the sequences in that mask and
attends within each one: exact, O(T^2) mask memory, fine for CPU-sized batches.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from prco_mega.platform.cpu_torchvision import ensure_torchvision_importable

# the families' vision towers are megatron HuggingFaceModules, which import transformers at import
# time; their providers import this module first
ensure_torchvision_importable()
from megatron.core.models.gpt import GPTModel  # noqa: E402
from megatron.core.models.gpt import gpt_layer_specs as specs  # noqa: E402
from megatron.core.transformer.module import MegatronModule  # noqa: E402
from megatron.core.transformer.transformer_block import (  # noqa: E402
    TransformerBlockSubmodules, get_num_layers_to_build)
from megatron.core.transformer.transformer_config import TransformerConfig  # noqa: E402

from prco_mega.learner.attention import SdpaDotProductAttention  # noqa: E402
from prco_mega.learner.config import RecomputeConfig  # noqa: E402
from prco_mega.learner.mrope import packed_causal_mask  # noqa: E402


def te_available() -> bool:
    """True when Transformer Engine imports (GPU machines with the extra installed)."""
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # TE raises assorted errors on machines without CUDA
        return False
    return True


def text_config(hf_config):
    """The language-model part of a VL config (or the config itself if text-only)."""
    return getattr(hf_config, "text_config", None) or hf_config


def rope_settings(hf_config) -> tuple[float, list[int]]:
    """(rope_theta, mrope_section) from transformers-5 `rope_parameters` or `rope_scaling`."""
    tc = text_config(hf_config)
    params = dict(getattr(tc, "rope_parameters", None) or {})
    legacy = dict(getattr(tc, "rope_scaling", None) or {})
    theta = params.get("rope_theta", getattr(tc, "rope_theta", 10000.0))
    section = params.get("mrope_section") or legacy.get("mrope_section")
    if section is None:
        raise ValueError("config has no mrope_section (rope_parameters or rope_scaling)")
    return float(theta), [int(s) for s in section]


def transformer_config_from_hf(hf_config, *, tp: int = 1, pp: int = 1, vpp: int | None = None,
                               params_dtype: torch.dtype = torch.float32,
                               **overrides: Any) -> TransformerConfig:
    """Megatron `TransformerConfig` for the Qwen2 decoder of `hf_config` at the given layout.

    `overrides` set any other TransformerConfig field (sequence_parallel, bf16, ...); the
    learner's activation recompute arrives here as `LearnerConfig.recompute.megatron_fields()`.
    """
    tc = text_config(hf_config)
    heads = tc.num_attention_heads
    _, section = rope_settings(hf_config)
    kwargs = dict(
        num_layers=tc.num_hidden_layers, hidden_size=tc.hidden_size,
        ffn_hidden_size=tc.intermediate_size, num_attention_heads=heads,
        num_query_groups=getattr(tc, "num_key_value_heads", None) or heads,
        kv_channels=getattr(tc, "head_dim", None) or tc.hidden_size // heads,
        normalization="RMSNorm", layernorm_epsilon=tc.rms_norm_eps,
        gated_linear_unit=True, activation_func=torch.nn.functional.silu,
        add_bias_linear=False, add_qkv_bias=True, mrope_section=section,
        hidden_dropout=0.0, attention_dropout=float(getattr(tc, "attention_dropout", 0.0)),
        init_method_std=getattr(tc, "initializer_range", 0.02),
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp,
        params_dtype=params_dtype, bf16=params_dtype == torch.bfloat16,
        pipeline_dtype=params_dtype,
        # fusions off: mrope frequencies are per token (no fused rope) and CPU has no kernels
        apply_rope_fusion=False, bias_activation_fusion=False, bias_dropout_fusion=False,
        masked_softmax_fusion=False, gradient_accumulation_fusion=False,
        persist_layer_norm=False,
    )
    kwargs.update(overrides)
    config = TransformerConfig(**kwargs)
    if config.recompute_granularity == "full":
        RecomputeConfig("full", config.recompute_method, config.recompute_num_layers).check_chunk(
            config.num_layers // (pp * (vpp or 1)))
    return config


class RMSNorm(torch.nn.Module):
    """RMSNorm as Qwen2 computes it: w * (x / sqrt(mean(x^2) + eps)), statistics in fp32.

    Megatron's local spec uses torch norms, which refuse sequence parallelism; this one accepts
    it and tags its weight `sequence_parallel` so Megatron all-reduces its gradient over TP.
    """

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6, **_: Any):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        setattr(self.weight, "sequence_parallel", bool(config.sequence_parallel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def decoder_spec(config: TransformerConfig, use_te: bool, vp_stage: int | None, pp_rank: int):
    """Layer specs of this chunk: TE's fused spec, or the local spec with our `RMSNorm` and
    SDPA core attention (`attention.py`)."""
    if use_te:
        return specs.get_gpt_layer_with_transformer_engine_spec()
    layer = specs.get_gpt_layer_local_spec(normalization="RMSNorm")
    attn = layer.submodules.self_attention
    attn = dataclasses.replace(attn, submodules=dataclasses.replace(
        attn.submodules, core_attention=SdpaDotProductAttention))
    sub = dataclasses.replace(layer.submodules, input_layernorm=RMSNorm, pre_mlp_layernorm=RMSNorm,
                              self_attention=attn)
    layer = dataclasses.replace(layer, submodules=sub)
    n = get_num_layers_to_build(config, vp_stage=vp_stage, pp_rank=pp_rank)
    return TransformerBlockSubmodules(layer_specs=[layer] * n, layer_norm=RMSNorm)


def merge_image_features(emb_sbh: torch.Tensor, input_ids: torch.Tensor, features: torch.Tensor,
                         image_token_id: int) -> torch.Tensor:
    """Replace rows of `emb_sbh` [S, B, H] at `input_ids` [B, S] == image_token_id by `features`
    [n, H], taken in batch-major token order (HF's `masked_scatter` order)."""
    mask_bs = input_ids == image_token_id
    n = int(mask_bs.sum())
    if n != features.shape[0]:
        raise ValueError(f"{n} image tokens in the batch but {features.shape[0]} image features")
    emb_bsh = emb_sbh.transpose(0, 1)
    emb_bsh = emb_bsh.masked_scatter(mask_bs[..., None], features.to(emb_bsh.dtype))
    return emb_bsh.transpose(0, 1).contiguous()


class VisionLanguageModel(MegatronModule):
    """One pipeline chunk of a Qwen-style vision-language model: optional vision tower + a
    `GPTModel` chunk, image features merged into the embeddings at the image tokens.

    Each family subclasses it (`families/<family>/provider.py`): `vision_tower_cls` (a module
    `(config, vision_config)` whose forward maps `(pixel_values, grid_thw)` to merged features)
    and `layer_specs` choose its tower and decoder layers."""

    vision_tower_cls: type[MegatronModule]

    @staticmethod
    def layer_specs(config: TransformerConfig, use_te: bool, vp_stage: int | None, pp_rank: int):
        """This chunk's decoder layer specs (`decoder_spec`)."""
        return decoder_spec(config, use_te, vp_stage, pp_rank)

    def __init__(self, config: TransformerConfig, hf_config, *, pg_collection, pre_process: bool,
                 post_process: bool, vp_stage: int | None = None, use_te: bool = False,
                 freeze_vision: bool = False):
        from megatron.core.enums import ModelType

        super().__init__(config=config)
        self.model_type = ModelType.encoder_or_decoder  # Megatron's schedules read it
        tc = text_config(hf_config)
        theta, _ = rope_settings(hf_config)
        self.pre_process, self.post_process, self.use_te = pre_process, post_process, use_te
        self.image_token_id = int(hf_config.image_token_id)
        self.tp_group = pg_collection.tp
        self.vision = None
        if pre_process and getattr(hf_config, "vision_config", None) is not None:
            self.vision = self.vision_tower_cls(config, hf_config.vision_config)
            if freeze_vision:
                self.vision.requires_grad_(False)
            elif config.recompute_granularity == "full":
                # Megatron's recompute covers the decoder only: under full recompute each ViT block
                # keeps only its input too (the planner's ViT row, `cluster.memory._vision_row`)
                self.vision.model.gradient_checkpointing_enable()
        self.language_model = GPTModel(
            config, self.layer_specs(config, use_te, vp_stage, pg_collection.pp.rank()),
            vocab_size=tc.vocab_size, max_sequence_length=tc.max_position_embeddings,
            pre_process=pre_process, post_process=post_process,
            share_embeddings_and_output_weights=bool(getattr(hf_config, "tie_word_embeddings",
                                                             False)),
            position_embedding_type="mrope", rotary_base=theta,
            scatter_embedding_sequence_parallel=False,  # we scatter after merging image features
            pg_collection=pg_collection, vp_stage=vp_stage)
        self.share_embeddings_and_output_weights = \
            self.language_model.share_embeddings_and_output_weights

    def set_input_tensor(self, input_tensor) -> None:
        self.language_model.set_input_tensor(input_tensor)

    def shared_embedding_or_output_weight(self):
        return self.language_model.shared_embedding_or_output_weight()

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None,
                image_grid_thw: torch.Tensor | None = None, packed_seq_params=None,
                labels: torch.Tensor | None = None, loss_mask: torch.Tensor | None = None,
                return_hidden: bool = False):
        """See the module docstring; `labels` [B, S] makes the last stage return per-token CE."""
        decoder_input = None
        if self.pre_process:
            decoder_input = self._embed(input_ids, pixel_values, image_grid_thw)
        if return_hidden and self.post_process:
            return self._final_hidden(input_ids, position_ids, attention_mask, decoder_input,
                                      packed_seq_params)
        return self.language_model(input_ids, position_ids, attention_mask,
                                   decoder_input=decoder_input, labels=labels,
                                   packed_seq_params=packed_seq_params, loss_mask=loss_mask)

    def _final_hidden(self, input_ids, position_ids, attention_mask, decoder_input,
                      packed_seq_params):
        """(final-norm hidden states [S, B, H], output weight shard [V/tp, H]) of the last stage.

        GPTModel returns the decoder's output (final norm included) when it is not the last stage,
        so it runs with `post_process` off for this call: the output layer is skipped, nothing of
        Megatron's forward is re-implemented here.
        """
        from megatron.core import tensor_parallel

        lm = self.language_model
        lm.post_process = False
        try:
            hidden = lm(input_ids, position_ids, attention_mask, decoder_input=decoder_input,
                        packed_seq_params=packed_seq_params)
        finally:
            lm.post_process = True
        if self.config.sequence_parallel:
            # The loss head all-reduces d hidden over TP itself, so the backward only splits.
            hidden = tensor_parallel.gather_from_sequence_parallel_region(
                hidden, tensor_parallel_output_grad=False, group=self.tp_group)
        weight = (lm.shared_embedding_or_output_weight() if lm.share_embeddings_and_output_weights
                  else lm.output_layer.weight)
        return hidden, weight

    def _embed(self, input_ids, pixel_values, image_grid_thw) -> torch.Tensor:
        from megatron.core import tensor_parallel

        emb = self.language_model.embedding(input_ids=input_ids, position_ids=None)  # [S, B, H]
        has_images = bool((input_ids == self.image_token_id).any())
        if has_images:
            if pixel_values is None or self.vision is None:
                raise ValueError("batch has image tokens but no pixel_values / vision tower")
            emb = merge_image_features(emb, input_ids, self.vision(pixel_values, image_grid_thw),
                                       self.image_token_id)
        elif self.vision is not None and torch.is_grad_enabled():
            emb = emb + self._zero_vision_term()
        if self.config.sequence_parallel:
            emb = tensor_parallel.scatter_to_sequence_parallel_region(emb, group=self.tp_group)
        return emb

    def _zero_vision_term(self) -> torch.Tensor:
        """0 * (one element of every trainable vision weight): a text-only micro-batch still gives
        the tower (zero) gradients, so Megatron DDP's overlapped grad buckets always complete."""
        terms = [p.reshape(-1)[:1].sum() for p in self.vision.parameters() if p.requires_grad]
        return torch.stack(terms).sum() * 0.0 if terms else torch.zeros(())


def resolve_use_te(use_te: bool | None) -> bool:
    """`None` -> whether Transformer Engine imports; `True` without TE raises."""
    if use_te is None:
        return te_available()
    if use_te and not te_available():
        raise ValueError("use_te=True but transformer_engine does not import")
    return use_te


def build_chunks(model_cls, config: TransformerConfig, hf_config, pg_collection, *,
                 pre_process: bool | None, post_process: bool | None, freeze_vision: bool,
                 vpp: int | None, use_te: bool) -> list:
    """One `model_cls` per virtual pipeline stage of this rank, on the current device."""
    from megatron.core.pipeline_parallel.utils import (
        is_pp_first_stage, is_pp_last_stage, is_vp_first_stage, is_vp_last_stage)

    chunks = []
    for stage in (range(vpp) if vpp else [None]):
        first = is_pp_first_stage(pg_collection.pp) and is_vp_first_stage(stage, vpp)
        last = is_pp_last_stage(pg_collection.pp) and is_vp_last_stage(stage, vpp)
        model = model_cls(
            config, hf_config, pg_collection=pg_collection,
            pre_process=first if pre_process is None else pre_process,
            post_process=last if post_process is None else post_process,
            vp_stage=stage, use_te=use_te, freeze_vision=freeze_vision)
        if torch.cuda.is_available():
            model.cuda(torch.cuda.current_device())
        chunks.append(model)
    return chunks


def forward(model, tokens: torch.Tensor, position_ids: torch.Tensor,
            pixel_values: torch.Tensor | None = None, image_grid_thw: torch.Tensor | None = None,
            *, packed_seq_params=None, attention_mask: torch.Tensor | None = None,
            labels: torch.Tensor | None = None, return_hidden: bool = False):
    """Run one chunk (possibly DDP-wrapped); packed THD becomes a block mask without TE."""
    inner = unwrap(model)
    if packed_seq_params is not None and not inner.use_te:
        if tokens.shape[0] != 1:
            raise ValueError(f"packed sequences need tokens [1, T], got {tuple(tokens.shape)}")
        attention_mask = packed_causal_mask(packed_seq_params.cu_seqlens_q.cpu(), tokens.shape[1])
        attention_mask = attention_mask.to(tokens.device)
        packed_seq_params = None
    return model(tokens, position_ids, attention_mask, pixel_values=pixel_values,
                 image_grid_thw=image_grid_thw, packed_seq_params=packed_seq_params, labels=labels,
                 return_hidden=return_hidden)


def unwrap(model):
    """The model inside DDP / Float16Module wrappers (their parameter names are the model's)."""
    while not isinstance(model, VisionLanguageModel) and hasattr(model, "module"):
        model = model.module
    return model
