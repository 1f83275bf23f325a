"""The Qwen2.5-VL weight-mapping table: fused layouts are laid out as Megatron expects (checked on
hand-labelled rows), every kind round-trips exactly at any TP, PP layer offsets land on the right HF
layer, tied embeddings read the embedding, and unknown model types are refused."""
import pytest
import torch

from prco_mega.bridge.hf_io import HFCheckpointReader
from prco_mega.bridge.mapping import (Heads, family_table, hf_legacy_name, hf_to_megatron_shard,
                                      megatron_shards_to_hf, resolve)
from prco_mega.families.qwen2_5_vl.mapping import ROWS as QWEN2_5_VL

HEADS = Heads(num_heads=4, num_kv_heads=2)
ARGS = dict(model_type="qwen2_5_vl", heads=HEADS)
L0 = "language_model.decoder.layers.0."


def labelled_qkv(head_dim: int = 2, hidden: int = 3):
    """q/k/v whose row r of head h holds the value 1000*kind + 10*h + r (kind 1=q, 2=k, 3=v)."""
    def block(kind, n_heads):
        rows = torch.tensor([1000 * kind + 10 * h + r for h in range(n_heads) for r in range(head_dim)],
                            dtype=torch.float32)
        return rows[:, None].expand(-1, hidden).clone()
    return {"model.layers.0.self_attn.q_proj.weight": block(1, 4),
            "model.layers.0.self_attn.k_proj.weight": block(2, 2),
            "model.layers.0.self_attn.v_proj.weight": block(3, 2)}


def test_qkv_shards_hold_each_kv_group_with_its_query_heads():
    hf = labelled_qkv()
    shards = [hf_to_megatron_shard(L0 + "self_attention.linear_qkv.weight", hf.__getitem__,
                                   tp_rank=r, tp_size=2, **ARGS)[:, 0].tolist() for r in range(2)]
    # group g = query heads 2g, 2g+1 then k head g then v head g; rank r holds group r
    assert shards[0] == [1000, 1001, 1010, 1011, 2000, 2001, 3000, 3001]
    assert shards[1] == [1020, 1021, 1030, 1031, 2010, 2011, 3010, 3011]


def test_qkv_bias_uses_the_same_grouping():
    hf = {k.replace("weight", "bias"): v[:, 0] for k, v in labelled_qkv().items()}
    fused = hf_to_megatron_shard(L0 + "self_attention.linear_qkv.bias", hf.__getitem__,
                                 tp_rank=0, tp_size=1, **ARGS)
    assert fused.tolist() == [1000, 1001, 1010, 1011, 2000, 2001, 3000, 3001,
                              1020, 1021, 1030, 1031, 2010, 2011, 3010, 3011]


def test_linear_fc1_shard_is_gate_shard_then_up_shard():
    hf = {"model.layers.0.mlp.gate_proj.weight": torch.arange(4.0)[:, None],
          "model.layers.0.mlp.up_proj.weight": 10 + torch.arange(4.0)[:, None]}
    shards = [hf_to_megatron_shard(L0 + "mlp.linear_fc1.weight", hf.__getitem__, tp_rank=r,
                                   tp_size=2, **ARGS)[:, 0].tolist() for r in range(2)]
    assert shards == [[0, 1, 10, 11], [2, 3, 12, 13]]


def test_row_parallel_splits_columns_and_vocab_splits_rows():
    w = torch.arange(16.0).reshape(4, 4)
    o = hf_to_megatron_shard(L0 + "self_attention.linear_proj.weight",
                             {"model.layers.0.self_attn.o_proj.weight": w}.__getitem__,
                             tp_rank=1, tp_size=2, **ARGS)
    e = hf_to_megatron_shard("language_model.embedding.word_embeddings.weight",
                             {"model.embed_tokens.weight": w}.__getitem__, tp_rank=1, tp_size=2, **ARGS)
    assert torch.equal(o, w[:, 2:]) and torch.equal(e, w[2:])


def tiny_hf_tensors(num_layers: int = 2, hidden: int = 8, ffn: int = 12, vocab: int = 16,
                    head_dim: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
              "lm_head.weight": (vocab, hidden), "visual.merger.mlp.0.weight": (5, 5),
              "visual.blocks.0.attn.qkv.bias": (6,)}
    for i in range(num_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (4 * head_dim, hidden), p + "self_attn.q_proj.bias": (4 * head_dim,),
            p + "self_attn.k_proj.weight": (2 * head_dim, hidden), p + "self_attn.k_proj.bias": (2 * head_dim,),
            p + "self_attn.v_proj.weight": (2 * head_dim, hidden), p + "self_attn.v_proj.bias": (2 * head_dim,),
            p + "self_attn.o_proj.weight": (hidden, 4 * head_dim),
            p + "mlp.gate_proj.weight": (ffn, hidden), p + "mlp.up_proj.weight": (ffn, hidden),
            p + "mlp.down_proj.weight": (hidden, ffn)})
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def megatron_names(num_layers: int) -> list[str]:
    """Megatron names of a chunk holding `num_layers` layers (local spec), plus two vision ones."""
    names = ["language_model.embedding.word_embeddings.weight",
             "language_model.decoder.final_layernorm.weight", "language_model.output_layer.weight",
             "vision.model.merger.mlp.0.weight", "vision.model.blocks.0.attn.qkv.bias"]
    for i in range(num_layers):
        names += [f"language_model.decoder.layers.{i}.{s}" for s in (
            "input_layernorm.weight", "pre_mlp_layernorm.weight", "self_attention.linear_qkv.weight",
            "self_attention.linear_qkv.bias", "self_attention.linear_proj.weight",
            "mlp.linear_fc1.weight", "mlp.linear_fc2.weight")]
    return names


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("pp", [1, 2])
def test_every_tensor_round_trips_exactly(tp, pp):
    hf = tiny_hf_tensors(num_layers=2)
    back = {}
    for stage in range(pp):
        layers = 2 // pp
        for name in megatron_names(layers):
            shards = [hf_to_megatron_shard(name, hf.__getitem__, tp_rank=r, tp_size=tp,
                                           layer_offset=stage * layers, **ARGS) for r in range(tp)]
            back.update(megatron_shards_to_hf(name, shards, layer_offset=stage * layers, **ARGS))
    assert sorted(back) == sorted(hf)
    assert all(torch.equal(back[k], hf[k]) for k in hf)


def test_pipeline_layer_offset_maps_local_to_global_layer():
    _, names = resolve("language_model.decoder.layers.1.mlp.linear_fc2.weight", QWEN2_5_VL,
                       layer_offset=14)
    assert names == ["model.layers.15.mlp.down_proj.weight"]


def test_transformer_engine_norm_names_map_like_local_ones():
    _, names = resolve(L0 + "self_attention.linear_qkv.layer_norm_weight", QWEN2_5_VL)
    assert names == ["model.layers.0.input_layernorm.weight"]
    _, names = resolve(L0 + "mlp.linear_fc1.layer_norm_weight", QWEN2_5_VL)
    assert names == ["model.layers.0.post_attention_layernorm.weight"]


def test_tied_output_layer_reads_the_embedding_and_is_not_exported():
    emb = torch.randn(16, 8)
    out = hf_to_megatron_shard("language_model.output_layer.weight",
                               {"model.embed_tokens.weight": emb}.__getitem__, tp_rank=0,
                               tp_size=2, tied=True, **ARGS)
    assert torch.equal(out, emb[:8])
    assert megatron_shards_to_hf("language_model.output_layer.weight", [out, out], tied=True,
                                 **ARGS) == {}


def test_unknown_model_type_is_refused():
    with pytest.raises(ValueError, match="qwen2_vl"):
        family_table("qwen2_vl")
    with pytest.raises(ValueError, match="llama"):
        hf_to_megatron_shard("language_model.decoder.final_layernorm.weight", {}.__getitem__,
                             model_type="llama", tp_rank=0, tp_size=1)


def test_unmapped_megatron_parameter_is_an_error():
    with pytest.raises(KeyError, match="decoder.layers.0.mystery"):
        resolve("language_model.decoder.layers.0.mystery.weight", QWEN2_5_VL)


def test_transformers5_nested_names_fold_onto_hub_names():
    assert hf_legacy_name("model.language_model.layers.3.mlp.up_proj.weight") == \
        "model.layers.3.mlp.up_proj.weight"
    assert hf_legacy_name("model.visual.blocks.0.norm1.weight") == "visual.blocks.0.norm1.weight"
    assert hf_legacy_name("lm_head.weight") == "lm_head.weight"


def test_lazy_safetensors_slices_equal_in_memory_shards(tmp_path):
    """Reading through the checkpoint reader (only the shard's bytes, nested names on disk) gives
    the same shards as slicing the full tensors."""
    from safetensors.torch import save_file

    hf = tiny_hf_tensors(num_layers=1)
    nested = {k.replace("model.layers.", "model.language_model.layers.")
              .replace("visual.", "model.visual."): v for k, v in hf.items()}
    save_file(nested, str(tmp_path / "model.safetensors"))
    reader = HFCheckpointReader(tmp_path)
    assert reader.names() == sorted(hf)
    for name in megatron_names(1):
        for r in range(2):
            lazy = hf_to_megatron_shard(name, reader, tp_rank=r, tp_size=2, **ARGS)
            full = hf_to_megatron_shard(name, hf.__getitem__, tp_rank=r, tp_size=2, **ARGS)
            assert torch.equal(lazy, full), name
