"""`ParamMap`: one row of a model family's weight-mapping table.

Only the row type lives here, so that the families' tables (`families/<family>/mapping.py`) and the
machinery that reads them (`bridge.mapping`, which finds a table through the families registry)
import it without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParamMap:
    """One row of a family's mapping table (the layouts are described in `bridge.mapping`)."""

    megatron: tuple[str, ...]
    """Megatron names (first = local spec, others = aliases such as TE's fused norm names);
    `{i}` = layer index local to the chunk, `{e}` = expert index local to the rank."""
    hf: tuple[str, ...]
    """Hugging Face names; several for fused layouts (q, k, v / gate, up); `{i}` = global layer,
    `{e}` = global expert."""
    kind: str
    """Layout: replicated | column | row | vocab | qkv | gate_up | prefix."""
    tied_hf: str | None = None
    """HF tensor to read instead when embeddings are tied (the row is then not exported)."""
    experts: str | None = None
    """Expert rows: the file tensor holding every expert of layer `{i}` (the hub's fused
    `...mlp.experts.gate_up_proj` / `down_proj`), whose expert `{e}` is the `hf` tensors. The
    parameter is split over the expert-TP group and each expert-parallel rank holds its own
    experts."""
