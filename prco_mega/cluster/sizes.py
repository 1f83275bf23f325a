"""A model's architecture sizes as the planner reads them (`ModelDims`, `VisionDims`), and the
`config.json` keys every family shares.

The types live apart from the counting and the preset lookup (`cluster.dims`) so that the
families' presets (`families/<family>/preset.py`) import them without importing the registry
that `cluster.dims` asks.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VisionDims:
    """The ViT tower (Qwen2.5-VL: RMSNorm, SwiGLU with biases, QKV with bias, patch merger)."""

    depth: int
    hidden: int
    intermediate: int
    heads: int
    out_hidden: int
    """Merger output width = the language model's hidden size."""
    patch_size: int = 14
    temporal_patch_size: int = 2
    in_channels: int = 3
    spatial_merge_size: int = 2
    """Patches merged into one language-model token per side (2x2 = 4 patches per token)."""
    family: str = "qwen2_5_vl"
    """"qwen2_5_vl" (RMSNorm, gated MLP, no patch bias) or "qwen3_vl" (LayerNorm with bias, plain
    tanh-GELU MLP, patch bias, learned position grid, deepstack mergers)."""
    position_embeddings: int = 0
    """Qwen3-VL: entries of the learned position grid (2304 = 48 x 48)."""
    deepstack: int = 0
    """Qwen3-VL: deepstack levels, each with its own merger."""


@dataclass(frozen=True)
class ModelDims:
    """Language-model sizes (Qwen2 decoder: RMSNorm, SwiGLU, QKV bias, GQA; a MoE model's layers
    with a router and SwiGLU experts in place of the MLP) and the ViT."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tie_embeddings: bool
    vision: VisionDims | None = None
    explicit_head_dim: int | None = None
    """Qwen3: head_dim from the config (128), not hidden / heads."""
    qkv_bias: bool = True
    """Qwen2.5 has q, k, v biases; Qwen3 none."""
    qk_norm: bool = False
    """Qwen3: RMSNorm weights [head_dim] on q and k in every layer."""
    num_experts: int = 0
    """Routed experts per MoE layer (0: a dense model; Qwen3-VL-30B-A3B: 128)."""
    experts_per_token: int = 0
    """The router's top-k (Qwen3-VL-MoE: 8)."""
    moe_intermediate: int = 0
    """Width of each expert's SwiGLU (Qwen3-VL-30B-A3B: 768); `intermediate` is then the width
    of the dense MLP layers, if any."""
    dense_mlp_layers: tuple[int, ...] = ()
    """Layers of a MoE model whose MLP is dense (HF `mlp_only_layers`, `decoder_sparse_step`);
    Qwen3-VL-MoE: none, every layer is MoE."""

    @property
    def moe_layers(self) -> int:
        """Decoder layers with a router and experts (0 for a dense model)."""
        return self.layers - len(self.dense_mlp_layers) if self.num_experts else 0

    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.hidden // self.heads

    @property
    def q_hidden(self) -> int:
        """Width of Q (and of the output projection's input): heads * head_dim."""
        return self.heads * self.head_dim

    @property
    def kv_hidden(self) -> int:
        """Width of K (and of V): kv_heads * head_dim."""
        return self.kv_heads * self.head_dim


def shared_dims_from_hf_config(cfg: dict, name: str = "hf") -> ModelDims:
    """ModelDims from the keys every family's `config.json` dict has (text keys at top level or
    in text_config), with Qwen2.5-VL's conventions for the rest (QKV bias, head_dim = hidden /
    heads, Qwen2.5-VL's ViT); a family with other conventions replaces those fields."""
    text = cfg.get("text_config") or cfg
    v = cfg.get("vision_config")
    vision = None if v is None else VisionDims(
        depth=v["depth"], hidden=v["hidden_size"], intermediate=v["intermediate_size"],
        heads=v["num_heads"], out_hidden=v.get("out_hidden_size", text["hidden_size"]),
        patch_size=v.get("patch_size", 14), temporal_patch_size=v.get("temporal_patch_size", 2),
        spatial_merge_size=v.get("spatial_merge_size", 2))
    return ModelDims(
        name=name, hidden=text["hidden_size"], intermediate=text["intermediate_size"],
        layers=text["num_hidden_layers"], heads=text["num_attention_heads"],
        kv_heads=text.get("num_key_value_heads", text["num_attention_heads"]),
        vocab=text["vocab_size"],
        tie_embeddings=bool(cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
        vision=vision)
