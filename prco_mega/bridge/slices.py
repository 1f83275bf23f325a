"""Which rows of each Hugging Face tensor a Megatron TP rank holds, and which an engine rank reads.

The live sync moves only what an engine rank's weight loader reads (its *need*), not whole tensors:
vLLM's loaders take a checkpoint-shaped tensor and narrow it to their TP rank's rows, so a rank
whose engine is split over TP ranks fetches its rows only. Both sides are described in HF space as
a `Span`, rows [start, stop) along one dim of the full HF tensor:

- held (Megatron, `held_span`): TP rank t of a `column`/`vocab`/`gate_up`/`qkv` parameter holds
  the t-th equal block of each of its HF tensors along dim 0 (`qkv`: its contiguous KV groups map
  to contiguous q, k and v rows); `row` splits dim 1; `replicated`/`prefix` hold everything.
- need (vLLM, `engine_span`): the same even blocks at the engine's TP size, except
  - `vocab`: vLLM pads the vocabulary to a multiple of 64 before splitting, then clips to the real
    rows (`VocabParallelEmbedding`), so its blocks differ from Megatron's unless both divide alike;
  - k/v with fewer KV heads than engine ranks: each head is replicated on tp / kv ranks, rank r
    reading head r // (tp / kv).
  The vision tower is replicated in the learner, so every rank holds what its engine reads.
- need under engine expert parallel (`expert_span`): vLLM splits a MoE layer's experts over the
  engine's ranks instead of their width (linear placement, `engine_experts`), so an expert's
  tensor is read whole by the rank holding it and not at all by the others; every other tensor
  keeps the TP rule above.

These rules mirror vLLM's loaders; the sync fills every row outside the need with NaN, so a rule
that missed a row the loader reads shows up as NaN log-probs in the sync tests, not as silently
wrong weights.
"""
from __future__ import annotations

from dataclasses import dataclass

from prco_mega.bridge.mapping import Heads, resolve, family_table

VLLM_VOCAB_PADDING = 64
"""vLLM's `DEFAULT_VOCAB_PADDING_SIZE`: vocab rows are padded to a multiple of it before the TP
split."""


@dataclass(frozen=True)
class Span:
    """Rows [start, stop) of a HF tensor along `dim`; `dim` None is the whole tensor."""

    dim: int | None
    start: int = 0
    stop: int = 0

    @property
    def whole(self) -> bool:
        return self.dim is None

    def numel(self, shape: tuple[int, ...]) -> int:
        n = 1
        for i, s in enumerate(shape):
            n *= (self.stop - self.start) if i == self.dim else s
        return n


WHOLE = Span(None)
NOTHING = Span(0, 0, 0)
"""No rows: a rank whose engine side needs nothing of a tensor."""


def _block(n: int, rank: int, size: int, what: str) -> tuple[int, int]:
    if n % size:
        raise ValueError(f"{what}: size {n} does not divide by tensor parallelism {size}")
    part = n // size
    return rank * part, (rank + 1) * part


def kind_of(megatron_name: str, model_type: str) -> str:
    row, _ = resolve(megatron_name, family_table(model_type))
    return row.kind


def held_span(kind: str, full_shape: tuple[int, ...], tp_rank: int, tp_size: int,
              what: str) -> Span:
    """Rows of a HF tensor (of a parameter of layout `kind`) that Megatron TP rank `tp_rank`
    holds."""
    if kind in ("replicated", "prefix") or tp_size == 1 or (kind == "row" and len(full_shape) < 2):
        return WHOLE
    dim = 1 if kind == "row" else 0
    return Span(dim, *_block(full_shape[dim], tp_rank, tp_size, what))


def engine_span(kind: str, member: int, full_shape: tuple[int, ...], engine_rank: int,
                engine_tp: int, heads: Heads, what: str) -> Span:
    """Rows of a HF tensor that rank `engine_rank` of an engine of `engine_tp` ranks loads.
    `member` is the tensor's place among its row's HF names (q, k, v = 0, 1, 2)."""
    if kind in ("replicated", "prefix") or engine_tp == 1:
        return WHOLE
    if kind == "row":
        if len(full_shape) < 2:  # a RowParallel bias is not split
            return WHOLE
        return Span(1, *_block(full_shape[1], engine_rank, engine_tp, what))
    if kind == "vocab":
        vocab = full_shape[0]
        padded = -(-vocab // VLLM_VOCAB_PADDING) * VLLM_VOCAB_PADDING
        a, b = _block(padded, engine_rank, engine_tp, what)
        return Span(0, min(a, vocab), min(b, vocab))
    if kind == "qkv" and member > 0 and heads.num_kv_heads < engine_tp:
        if engine_tp % heads.num_kv_heads:
            raise ValueError(f"{what}: engine tensor parallelism {engine_tp} is neither a divisor "
                             f"nor a multiple of the {heads.num_kv_heads} KV heads")
        head_dim = full_shape[0] // heads.num_kv_heads
        head = engine_rank // (engine_tp // heads.num_kv_heads)
        return Span(0, head * head_dim, (head + 1) * head_dim)
    return Span(0, *_block(full_shape[0], engine_rank, engine_tp, what))


def engine_experts(num_experts: int, engine_rank: int, engine_size: int) -> range:
    """Global ids of the experts rank `engine_rank` of an engine of `engine_size` ranks holds
    under vLLM's expert parallel (linear placement, `determine_expert_map`): consecutive blocks in
    rank order, of num_experts // size experts, one more on each of the first num_experts % size
    ranks."""
    base, extra = divmod(num_experts, engine_size)
    start = engine_rank * base + min(engine_rank, extra)
    return range(start, start + base + (engine_rank < extra))


def expert_span(expert: int, num_experts: int, engine_rank: int, engine_size: int) -> Span:
    """Rows of one expert's tensor that an engine rank with expert parallel loads: all of them
    on the rank holding the expert (experts are not split), none elsewhere."""
    return WHOLE if expert in engine_experts(num_experts, engine_rank, engine_size) else NOTHING


def hull(spans: list[Span]) -> Span:
    """The smallest span covering all of `spans` (one dim; any whole span makes it whole; empty
    spans add nothing; none is `NOTHING`)."""
    spans = [s for s in spans if s.whole or s.start < s.stop]
    if not spans:
        return NOTHING
    if any(s.whole for s in spans) or len({s.dim for s in spans}) > 1:
        return WHOLE
    return Span(spans[0].dim, min(s.start for s in spans), max(s.stop for s in spans))


def intersect(held: Span, need: Span, full_shape: tuple[int, ...]) -> Span | None:
    """The part of `held` that `need` covers, as a span of the full tensor (None: nothing)."""
    if held.whole and need.whole:
        return WHOLE
    if not need.whole and need.start >= need.stop:
        return None
    dim = held.dim if need.whole else need.dim
    if not held.whole and not need.whole and held.dim != need.dim:
        raise ValueError(f"held rows split dim {held.dim} but the engine splits dim {need.dim}")
    a0, a1 = (0, full_shape[dim]) if held.whole else (held.start, held.stop)
    b0, b1 = (0, full_shape[dim]) if need.whole else (need.start, need.stop)
    lo, hi = max(a0, b0), min(a1, b1)
    return Span(dim, lo, hi) if lo < hi else None


def local_heads(heads: Heads, tp_size: int) -> Heads:
    """The heads of one TP rank's shard (Megatron splits both by TP)."""
    return Heads(heads.num_heads // tp_size, heads.num_kv_heads // tp_size)


def full_shape_of(kind: str, shard_shape: tuple[int, ...], tp_size: int) -> tuple[int, ...]:
    """A HF tensor's full shape from the shape of one TP rank's piece of it."""
    if kind in ("replicated", "prefix") or tp_size == 1:
        return tuple(shard_shape)
    dim = 1 if kind == "row" else 0
    return tuple(s * tp_size if i == dim else s for i, s in enumerate(shard_shape))
