"""What the stack asks of a model family, as one typed record (`Family`); the registry of records
by `model_type` is `prco_mega.families`.

A record holds data and functions only: building the Megatron model imports Megatron when it is
called, so reading the registry (the planner, the converter's checks) stays light.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prco_mega.bridge.param_map import ParamMap
    from prco_mega.cluster.sizes import ModelDims


@dataclass(frozen=True)
class TinyBuilder:
    """The family's tiny random model for CPU machines (`tiny.checkpoint.make_tiny_checkpoint`)."""

    sizes: type
    """Frozen dataclass of the tiny sizes (has `vocab_size`); `sizes()` is the default model."""
    config: Callable[..., Any]
    """`(sizes, special: SpecialTokenIds) -> transformers config`."""
    build: Callable[..., Any]
    """`(config, seed=, init_std=) -> transformers model` with random fp32 weights."""
    save_processor: Callable[..., Path]
    """`(out_dir, tokenizer, chat_template) -> out_dir`: image, video and processor configs."""


@dataclass(frozen=True)
class Family:
    """One model family, keyed by the Hugging Face `model_type` of its checkpoints."""

    model_type: str
    """`config.json`'s `model_type` (the registry key)."""
    architectures: tuple[str, ...]
    """`config.json` architectures the converter accepts; the first is written on export."""
    build_model: Callable[..., list]
    """`(hf_config, pg_collection, *, pre_process=None, post_process=None, freeze_vision=False,
    vpp=None, use_te=None, params_dtype=torch.float32, config_overrides=None) -> model chunks`
    (one per virtual pipeline stage; `learner.model` documents the chunks)."""
    mapping: tuple[ParamMap, ...]
    """Megatron <-> Hugging Face weight-mapping rows (`bridge.mapping` reads them)."""
    nested_names: bool
    """The rows use transformers-5 nested names as stored (`model.language_model.*`); otherwise
    the legacy hub layout, onto which `bridge.mapping.hf_legacy_name` folds nested names."""
    presets: Mapping[str, ModelDims]
    """Planner presets of the published models, by name."""
    dims_from_config: Callable[[dict, str], ModelDims]
    """`(config.json dict, name) -> ModelDims` for the planner."""
    tiny: TinyBuilder
    """The tiny CPU model."""
