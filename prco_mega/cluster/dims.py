"""The planner's model sizes: a preset by name (each family's `preset.py`, through the families
registry) or a Hugging Face `config.json` read by its family's rule, and parameter counts from the
sizes (`ModelDims`, `VisionDims`: `cluster.sizes`).
"""
from __future__ import annotations

import json
from pathlib import Path

from prco_mega.cluster.sizes import ModelDims, VisionDims, shared_dims_from_hf_config
from prco_mega.families import FAMILIES, presets


def model_dims(name_or_path: str) -> ModelDims:
    """A known preset by name, else a Hugging Face `config.json` (file or its directory)."""
    known = presets()
    if name_or_path in known:
        return known[name_or_path]
    p = Path(name_or_path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise ValueError(f"model {name_or_path!r} is neither a known preset "
                         f"{sorted(known)} nor a Hugging Face config.json")
    return dims_from_hf_config(json.loads(p.read_text()), name=str(name_or_path))


def dims_from_hf_config(cfg: dict, name: str = "hf") -> ModelDims:
    """ModelDims from a `config.json` dict, read by its `model_type`'s family; a config of no
    registered family (a text-only Qwen2, say) is read with the shared keys."""
    family = FAMILIES.get(cfg.get("model_type"))
    read = family.dims_from_config if family is not None else shared_dims_from_hf_config
    return read(cfg, name)


# ----------------------------------------------------------------------------- parameter counts
def decoder_layer_params(m: ModelDims, moe: bool = False) -> tuple[int, int]:
    """(TP-split, replicated) parameters of one decoder layer, without its experts.

    split = q (h*q + q) + k, v (h*kv + kv each) + o (q*h) + gate, up, down (3*h*f), q = heads *
    head_dim (= h for Qwen2.5), the biases only with `qkv_bias`;
    replicated = the two RMSNorm weights (2*h) + QK-norm (2*head_dim, Qwen3).
    A MoE layer (`moe`) has no dense MLP but a router [E, h], replicated like Megatron's.
    """
    h, q, kv, f = m.hidden, m.q_hidden, m.kv_hidden, m.intermediate
    bias = 1 if m.qkv_bias else 0
    attn = (h * q + bias * q) + 2 * (h * kv + bias * kv) + q * h
    repl = 2 * h + (2 * m.head_dim if m.qk_norm else 0)
    if moe:
        return attn, repl + m.num_experts * h
    return attn + 3 * h * f, repl


def expert_params(m: ModelDims) -> int:
    """Parameters of one expert: SwiGLU gate, up [I, h] and down [h, I], no biases."""
    return 3 * m.hidden * m.moe_intermediate


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


def total_params(m: ModelDims, experts_used: int | None = None) -> int:
    """All parameters of the checkpoint: embeddings, decoder (a MoE layer: attention, router and
    every expert), final norm, LM head, vision tower. `experts_used` counts only that many experts
    per MoE layer (`active_params`)."""
    dense, moe = m.layers - m.moe_layers, m.moe_layers
    experts = m.num_experts if experts_used is None else experts_used
    decoder = (dense * sum(decoder_layer_params(m)) + moe * sum(decoder_layer_params(m, True))
               + moe * experts * expert_params(m) + m.hidden)
    head = 0 if m.tie_embeddings else m.vocab * m.hidden
    return m.vocab * m.hidden + decoder + head + vision_params(m.vision)


def active_params(m: ModelDims) -> int:
    """Parameters one token runs through: every dense part and its top-k experts per MoE layer
    (the "A3B" of Qwen3-VL-30B-A3B; the whole model for a dense one)."""
    return total_params(m, m.experts_per_token if m.num_experts else None)
