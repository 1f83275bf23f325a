"""Row rules of the slice-aware weight sync (`bridge.slices`): what a Megatron TP rank holds and
what a vLLM engine rank loads, in HF rows. The sync tests check them against vLLM's loaders
(rows outside a rank's need are pushed as NaN); these pin the layouts that the tiny model does
not reach: vocab padding to 64, KV heads replicated over more engine ranks than heads."""
import pytest

from prco_mega.bridge.mapping import Heads
from prco_mega.bridge.slices import (WHOLE, Span, engine_span, full_shape_of, held_span, hull,
                                     intersect)

HEADS = Heads(num_heads=8, num_kv_heads=2)


def test_vocab_rows_follow_vllm_padding_to_64():
    # 1000 rows pad to 1024; 4 ranks of 256: the last one loads the 232 real rows left
    spans = [engine_span("vocab", 0, (1000, 16), r, 4, HEADS, "embed") for r in range(4)]
    assert spans == [Span(0, 0, 256), Span(0, 256, 512), Span(0, 512, 768), Span(0, 768, 1000)]
    # Megatron's even split differs, so a rank fetches the difference
    assert held_span("vocab", (1000, 16), 3, 4, "embed") == Span(0, 750, 1000)
    assert intersect(held_span("vocab", (1000, 16), 2, 4, "e"), spans[3], (1000, 16)) is None
    assert intersect(held_span("vocab", (1000, 16), 3, 4, "e"), spans[2], (1000, 16)) == \
        Span(0, 750, 768)


def test_kv_heads_replicated_when_the_engine_has_more_ranks_than_kv_heads():
    k_shape = (2 * 4, 32)  # 2 KV heads of dim 4
    spans = [engine_span("qkv", 1, k_shape, r, 4, HEADS, "k") for r in range(4)]
    assert spans == [Span(0, 0, 4), Span(0, 0, 4), Span(0, 4, 8), Span(0, 4, 8)]
    q = [engine_span("qkv", 0, (32, 32), r, 4, HEADS, "q") for r in range(4)]
    assert q == [Span(0, 8 * r, 8 * r + 8) for r in range(4)]
    with pytest.raises(ValueError, match="neither a divisor nor a multiple"):
        engine_span("qkv", 2, (3 * 4, 32), 0, 4, Heads(6, 3), "v")


def test_row_parallel_splits_the_input_dim_and_replicated_is_whole():
    assert engine_span("row", 0, (16, 64), 1, 2, HEADS, "o") == Span(1, 32, 64)
    assert held_span("row", (16, 64), 0, 4, "o") == Span(1, 0, 16)
    assert engine_span("replicated", 0, (16,), 1, 2, HEADS, "norm") == WHOLE
    assert engine_span("prefix", 0, (16, 16), 1, 2, HEADS, "visual") == WHOLE
    assert engine_span("column", 0, (16, 64), 0, 1, HEADS, "gate") == WHOLE
    with pytest.raises(ValueError, match="does not divide"):
        engine_span("column", 0, (10, 4), 0, 4, HEADS, "gate")


def test_hull_intersect_and_full_shape():
    assert hull([Span(0, 4, 8), Span(0, 0, 2)]) == Span(0, 0, 8)
    assert hull([Span(0, 4, 8), WHOLE]) == WHOLE
    assert intersect(Span(0, 0, 4), Span(0, 4, 8), (8, 2)) is None
    assert intersect(Span(0, 0, 6), Span(0, 4, 8), (8, 2)) == Span(0, 4, 6)
    assert intersect(WHOLE, Span(1, 2, 3), (8, 4)) == Span(1, 2, 3)
    assert intersect(Span(0, 2, 6), WHOLE, (8, 4)) == Span(0, 2, 6)
    assert Span(0, 2, 6).numel((8, 4)) == 16
    assert full_shape_of("row", (16, 8), 4) == (16, 32)
    assert full_shape_of("qkv", (12, 8), 2) == (24, 8)
    assert full_shape_of("replicated", (8,), 2) == (8,)
