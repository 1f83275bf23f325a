"""Weight-sync bucketing (`bridge.buckets`): a push can never split a fused engine layer.

The engine (vLLM) finalises a fused layer (q/k/v weights + biases; gate + up) from the tensors of
one push only, so the bucketing unit is a `FusedGroup`, released by `GroupAssembler` only when
every member has arrived. These tests try to split groups (1-byte buckets, members arriving
interleaved across layers, missing members) and check each group lands whole in one bucket,
buckets respect the byte bound. (Non-finite weights are refused once, before any bucket, by the
sync's pre-check of every shard: tests/distributed/test_bridge_sync.py.)
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prco_mega.bridge.buckets import FusedGroup, GroupAssembler, bucketize
from prco_mega.bridge.units import unit_key

LAYERS, HIDDEN, KV, FFN = 3, 8, 4, 16


def engine_spec() -> dict[str, list[str]]:
    """What `VllmEngine.weight_groups()` returns for a Qwen2 decoder (member lists per layer)."""
    spec = {}
    for i in range(LAYERS):
        a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        spec[a + "qkv_proj"] = [a + f"{p}_proj.{w}" for w in ("weight", "bias") for p in "qkv"]
        spec[a + "o_proj"] = [a + "o_proj.weight"]
        spec[m + "gate_up_proj"] = [m + "gate_proj.weight", m + "up_proj.weight"]
        spec[m + "down_proj"] = [m + "down_proj.weight"]
    spec["model.embed_tokens"] = ["model.embed_tokens.weight"]
    return spec


def shape_of(name: str) -> tuple[int, ...]:
    rows = {"q_": HIDDEN, "k_": KV, "v_": KV, "o_": HIDDEN, "gate": FFN, "up_": FFN,
            "down": HIDDEN, "embed": 32}
    leaf = name.split(".")[-2]
    n = next(v for k, v in rows.items() if leaf.startswith(k))
    if name.endswith("bias"):
        return (n,)
    return (n, FFN if leaf.startswith("down") else HIDDEN)


def tensors_interleaved() -> list[tuple[str, torch.Tensor]]:
    """Every tensor, in an adversarial order: member j of every group before member j + 1."""
    spec, gen = engine_spec(), torch.Generator().manual_seed(0)
    width = max(len(v) for v in spec.values())
    names = [m[j] for j in range(width) for m in spec.values() if j < len(m)]
    return [(n, torch.randn(shape_of(n), generator=gen)) for n in names]


def stream_buckets(bucket_bytes: int) -> list[list[FusedGroup]]:
    assembler = GroupAssembler(engine_spec())

    def groups():
        for name, t in tensors_interleaved():
            group = assembler.add(name, t)
            if group is not None:
                yield group
        assembler.finish()

    return list(bucketize(groups(), bucket_bytes))


@pytest.mark.parametrize("bucket_bytes", [1, 300, 2000, 10**9])
def test_every_fused_group_lands_whole_in_exactly_one_bucket(bucket_bytes):
    spec, buckets = engine_spec(), stream_buckets(bucket_bytes)
    where = {}
    for b, bucket in enumerate(buckets):
        pushed = [name for g in bucket for name, _ in g.tensors]
        for name in pushed:
            where.setdefault(name, set()).add(b)
        for key, members in spec.items():  # a bucket touching a layer holds all of that layer
            touched = [m for m in members if m in pushed]
            assert touched in ([], members), (key, touched)
    assert set(where) == {n for m in spec.values() for n in m}
    assert all(len(bs) == 1 for bs in where.values())  # each tensor pushed once
    for key, members in spec.items():
        assert len({next(iter(where[m])) for m in members}) == 1, key


@pytest.mark.parametrize("bucket_bytes", [1, 300, 2000])
def test_buckets_respect_the_byte_bound_except_a_lone_oversized_group(bucket_bytes):
    for bucket in stream_buckets(bucket_bytes):
        size = sum(g.nbytes for g in bucket)
        assert size <= bucket_bytes or len(bucket) == 1


def test_one_byte_bound_pushes_one_fused_group_per_bucket():
    buckets = stream_buckets(1)
    assert [len(b) for b in buckets] == [1] * len(engine_spec())
    qkv = next(b[0] for b in buckets if b[0].key.endswith("layers.1.self_attn.qkv_proj"))
    assert len(qkv.tensors) == 6  # q, k, v weights and biases together


def test_incomplete_group_is_never_released():
    spec = engine_spec()
    assembler = GroupAssembler(spec)
    gate, up, down = (f"model.layers.0.mlp.{p}_proj.weight" for p in ("gate", "up", "down"))
    assert assembler.add(gate, torch.zeros(FFN, HIDDEN)) is None  # gate alone: held back
    down = assembler.add(down, torch.zeros(HIDDEN, FFN))
    assert down is not None and down.key == "model.layers.0.mlp.down_proj"
    with pytest.raises(ValueError, match=r"gate_up_proj is incomplete, missing "
                                         r"\['model.layers.0.mlp.up_proj.weight'\]"):
        assembler.finish()
    assert assembler.add(up, torch.zeros(FFN, HIDDEN)) is not None


def test_unknown_and_repeated_tensors_are_refused():
    assembler = GroupAssembler(engine_spec())
    with pytest.raises(ValueError, match="model.layers.9.mlp.up_proj.weight is not a tensor"):
        assembler.add("model.layers.9.mlp.up_proj.weight", torch.zeros(1))
    assembler.add("model.layers.0.mlp.up_proj.weight", torch.zeros(1))
    with pytest.raises(ValueError, match="produced twice"):
        assembler.add("model.layers.0.mlp.up_proj.weight", torch.zeros(1))


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 50), min_size=1, max_size=30),
       bound=st.integers(1, 120))
def test_bucketize_is_greedy_ordered_and_bounded(sizes, bound):
    groups = [FusedGroup(f"g{i}", ((f"t{i}", torch.zeros(n, dtype=torch.uint8)),))
              for i, n in enumerate(sizes)]
    buckets = list(bucketize(iter(groups), bound))
    assert [g for b in buckets for g in b] == groups  # every group once, in order
    totals = [sum(g.nbytes for g in b) for b in buckets]
    for b, total in zip(buckets, totals):
        assert b and (total <= bound or len(b) == 1)
    for b, nxt in zip(totals, buckets[1:]):  # greedy: the next group did not fit
        assert b + nxt[0].nbytes > bound


def test_bucket_bound_must_be_positive():
    with pytest.raises(ValueError, match=r"bucket_bytes \(0\)"):
        list(bucketize([], 0))


def test_units_are_whole_decoder_layers_and_vision_blocks():
    assert unit_key("language_model.decoder.layers.3.self_attention.linear_qkv.bias") == \
        unit_key("language_model.decoder.layers.3.mlp.linear_fc1.weight")
    assert unit_key("language_model.decoder.layers.3.mlp.linear_fc1.weight") != \
        unit_key("language_model.decoder.layers.30.mlp.linear_fc1.weight")
    assert unit_key("vision.model.blocks.1.attn.qkv.weight") == "vision.model.blocks.1."
    assert unit_key("language_model.embedding.word_embeddings.weight") == \
        "language_model.embedding.word_embeddings.weight"
