"""Published architecture sizes of the Qwen2.5-VL and Qwen3-VL families, as data, and parameter
counts from them.

Sizes are the public Hugging Face `config.json` values of Qwen/Qwen2.5-VL-{3B,7B,32B,72B}-Instruct
(text: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
num_key_value_heads, vocab_size, tie_word_embeddings; vision_config: depth, hidden_size,
intermediate_size, num_heads, out_hidden_size, patch_size 14, temporal_patch_size 2,
spatial_merge_size 2), and of Qwen/Qwen3-VL-{8B,32B}-Instruct (also head_dim; no QKV bias, QK-norm;
vision: patch 16, num_position_embeddings, deepstack_visual_indexes). The planner may also read
any Qwen2.5-VL- or Qwen3-VL-style `config.json` from disk.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


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
    """Language-model sizes (Qwen2 decoder: RMSNorm, SwiGLU, QKV bias, GQA) and the ViT."""

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


_VIT = dict(depth=32, hidden=1280, intermediate=3420, heads=16)
# Source: huggingface.co/Qwen/Qwen2.5-VL-{3B,7B,32B,72B}-Instruct/blob/main/config.json
QWEN25_VL: dict[str, ModelDims] = {
    "qwen2.5-vl-3b": ModelDims("qwen2.5-vl-3b", hidden=2048, intermediate=11008, layers=36,
                               heads=16, kv_heads=2, vocab=151936, tie_embeddings=True,
                               vision=VisionDims(**_VIT, out_hidden=2048)),
    "qwen2.5-vl-7b": ModelDims("qwen2.5-vl-7b", hidden=3584, intermediate=18944, layers=28,
                               heads=28, kv_heads=4, vocab=152064, tie_embeddings=False,
                               vision=VisionDims(**_VIT, out_hidden=3584)),
    "qwen2.5-vl-32b": ModelDims("qwen2.5-vl-32b", hidden=5120, intermediate=27648, layers=64,
                                heads=40, kv_heads=8, vocab=152064, tie_embeddings=False,
                                vision=VisionDims(**_VIT, out_hidden=5120)),
    "qwen2.5-vl-72b": ModelDims("qwen2.5-vl-72b", hidden=8192, intermediate=29568, layers=80,
                                heads=64, kv_heads=8, vocab=152064, tie_embeddings=False,
                                vision=VisionDims(**_VIT, out_hidden=8192)),
}


_VIT3 = dict(depth=27, hidden=1152, intermediate=4304, heads=16, patch_size=16, family="qwen3_vl",
             position_embeddings=2304, deepstack=3)
_QWEN3 = dict(vocab=151936, tie_embeddings=False, explicit_head_dim=128, qkv_bias=False,
              qk_norm=True)
# Source: huggingface.co/Qwen/Qwen3-VL-{8B,32B}-Instruct/blob/main/config.json
QWEN3_VL: dict[str, ModelDims] = {
    "qwen3-vl-8b": ModelDims("qwen3-vl-8b", hidden=4096, intermediate=12288, layers=36, heads=32,
                             kv_heads=8, vision=VisionDims(**_VIT3, out_hidden=4096), **_QWEN3),
    "qwen3-vl-32b": ModelDims("qwen3-vl-32b", hidden=5120, intermediate=25600, layers=64,
                              heads=64, kv_heads=8, vision=VisionDims(**_VIT3, out_hidden=5120),
                              **_QWEN3),
}

PRESETS: dict[str, ModelDims] = {**QWEN25_VL, **QWEN3_VL}
"""Every preset by name."""


def model_dims(name_or_path: str) -> ModelDims:
    """A known preset by name, else a Hugging Face `config.json` (file or its directory)."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    p = Path(name_or_path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise ValueError(f"model {name_or_path!r} is neither a known preset "
                         f"{sorted(PRESETS)} nor a Hugging Face config.json")
    return dims_from_hf_config(json.loads(p.read_text()), name=str(name_or_path))


def dims_from_hf_config(cfg: dict, name: str = "hf") -> ModelDims:
    """ModelDims from a Qwen2.5-VL `config.json` dict (text keys at top level or in text_config)."""
    text = cfg.get("text_config") or cfg
    v = cfg.get("vision_config")
    qwen3 = cfg.get("model_type") == "qwen3_vl"
    vision = None if v is None else VisionDims(
        depth=v["depth"], hidden=v["hidden_size"], intermediate=v["intermediate_size"],
        heads=v["num_heads"], out_hidden=v.get("out_hidden_size", text["hidden_size"]),
        patch_size=v.get("patch_size", 14), temporal_patch_size=v.get("temporal_patch_size", 2),
        spatial_merge_size=v.get("spatial_merge_size", 2),
        **(dict(family="qwen3_vl", position_embeddings=v.get("num_position_embeddings", 2304),
                deepstack=len(v.get("deepstack_visual_indexes", ()))) if qwen3 else {}))
    return ModelDims(
        name=name, hidden=text["hidden_size"], intermediate=text["intermediate_size"],
        layers=text["num_hidden_layers"], heads=text["num_attention_heads"],
        kv_heads=text.get("num_key_value_heads", text["num_attention_heads"]),
        vocab=text["vocab_size"],
        tie_embeddings=bool(cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
        vision=vision, explicit_head_dim=text.get("head_dim") if qwen3 else None,
        qkv_bias=not qwen3 or bool(text.get("attention_bias", False)), qk_norm=qwen3)


# ----------------------------------------------------------------------------- parameter counts
def decoder_layer_params(m: ModelDims) -> tuple[int, int]:
    """(TP-split, replicated) parameters of one decoder layer.

    split = q (h*q + q) + k, v (h*kv + kv each) + o (q*h) + gate, up, down (3*h*f), q = heads *
    head_dim (= h for Qwen2.5), the biases only with `qkv_bias`;
    replicated = the two RMSNorm weights (2*h) + QK-norm (2*head_dim, Qwen3).
    """
    h, q, kv, f = m.hidden, m.q_hidden, m.kv_hidden, m.intermediate
    bias = 1 if m.qkv_bias else 0
    split = (h * q + bias * q) + 2 * (h * kv + bias * kv) + q * h + 3 * h * f
    return split, 2 * h + (2 * m.head_dim if m.qk_norm else 0)


def vision_params(v: VisionDims | None) -> int:
    """Parameters of the ViT: patch embed, blocks, the 2x2 patch merger (Qwen3-VL: + learned
    position grid and one merger per deepstack level, normed over the merged width)."""
    if v is None:
        return 0
    hv, fv = v.hidden, v.intermediate
    merged = hv * v.spatial_merge_size**2
    patch = v.in_channels * v.temporal_patch_size * v.patch_size**2 * hv
    attn = (hv * 3 * hv + 3 * hv) + (hv * hv + hv)
    mlp_merger = (merged * merged + merged) + (merged * v.out_hidden + v.out_hidden)
    if v.family == "qwen3_vl":  # LayerNorms with bias, plain MLP, patch bias
        block = 4 * hv + attn + (hv * fv + fv) + (fv * hv + hv)
        mergers = 2 * hv + mlp_merger + v.deepstack * (2 * merged + mlp_merger)
        return patch + hv + v.position_embeddings * hv + v.depth * block + mergers
    block = 2 * hv + attn + 2 * (hv * fv + fv) + (fv * hv + hv)
    return patch + v.depth * block + hv + mlp_merger


def total_params(m: ModelDims) -> int:
    """All parameters of the checkpoint: embeddings, decoder, final norm, LM head, vision tower."""
    split, repl = decoder_layer_params(m)
    head = 0 if m.tie_embeddings else m.vocab * m.hidden
    decoder = m.layers * (split + repl) + m.hidden
    return m.vocab * m.hidden + decoder + head + vision_params(m.vision)
