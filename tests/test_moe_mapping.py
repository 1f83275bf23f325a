"""The expert rows of the weight mapping and the fused expert files: Megatron's SequentialMLP
expert e of a rank (and TE's grouped alias) is the per-expert Hugging Face tensors of global expert
offset + e, gate and up fused as for a dense MLP and split over expert-TP; a file's fused experts
read the same in the hub's layout and in transformers', are written in the hub's, and a file whose
sizes make the two layouts read alike is refused instead of guessed."""
import json

import pytest
import torch
from safetensors.torch import save_file

from prco_mega.bridge.hf_io import ExpertFuser, HFCheckpointReader
from prco_mega.bridge.mapping import (fold_expert_shapes, fuse_experts, fused_layout, fused_row,
                                      hf_to_megatron_shard, megatron_shards_to_hf, resolve)
from prco_mega.families.qwen3_vl_moe.mapping import ROWS

MT = "qwen3_vl_moe"
E, H, I = 4, 6, 2  # experts, hidden, expert width: H is neither I nor 2 * I
L = "model.language_model.layers.{i}.mlp."
FC1 = "language_model.decoder.layers.{j}.mlp.experts.local_experts.{e}.linear_fc1.weight"
FC2 = "language_model.decoder.layers.{j}.mlp.experts.local_experts.{e}.linear_fc2.weight"


def labelled_experts(layer: int = 0) -> dict[str, torch.Tensor]:
    """Per-expert tensors whose entry (r, c) of expert e holds 1000 * kind + 100 * e + 10 * r + c
    (kind 1 = gate, 2 = up, 3 = down)."""
    def block(kind, e, rows, cols):
        r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        return (1000 * kind + 100 * e + 10 * r + c).float()
    out = {}
    for e in range(E):
        out[L.format(i=layer) + f"experts.{e}.gate_proj.weight"] = block(1, e, I, H)
        out[L.format(i=layer) + f"experts.{e}.up_proj.weight"] = block(2, e, I, H)
        out[L.format(i=layer) + f"experts.{e}.down_proj.weight"] = block(3, e, H, I)
    return out


def fused_file(tmp_path, layout: str, hidden: int = H, width: int = I):
    """A one-layer checkpoint directory holding the labelled experts fused in `layout`."""
    experts = labelled_experts()
    gate = torch.stack([experts[L.format(i=0) + f"experts.{e}.gate_proj.weight"] for e in range(E)])
    up = torch.stack([experts[L.format(i=0) + f"experts.{e}.up_proj.weight"] for e in range(E)])
    down = torch.stack([experts[L.format(i=0) + f"experts.{e}.down_proj.weight"] for e in range(E)])
    gate_up = torch.cat([gate, up], dim=1)  # transformers': [E, 2I, H]
    if layout == "hub":
        gate_up, down = gate_up.transpose(1, 2), down.transpose(1, 2)
    tensors = {L.format(i=0) + "experts.gate_up_proj": gate_up.contiguous(),
               L.format(i=0) + "experts.down_proj": down.contiguous()}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": MT, "text_config": {
        "hidden_size": hidden, "moe_intermediate_size": width}}))
    return tmp_path, tensors


def test_expert_rows_name_global_experts_and_te_aliases():
    row, names = resolve(FC1.format(j=1, e=0), ROWS, layer_offset=2, expert_offset=4)
    assert names == [L.format(i=3) + "experts.4.gate_proj.weight",
                     L.format(i=3) + "experts.4.up_proj.weight"]
    assert row.experts == L + "experts.gate_up_proj"
    te_row, te_names = resolve("language_model.decoder.layers.1.mlp.experts.linear_fc2.weight3",
                               ROWS, layer_offset=2, expert_offset=4)
    assert te_names == [L.format(i=3) + "experts.7.down_proj.weight"] and te_row.kind == "row"
    router, names = resolve("language_model.decoder.layers.0.mlp.router.weight", ROWS)
    assert (router.kind, names) == ("replicated", [L.format(i=0) + "gate.weight"])


def test_expert_fc1_shard_is_gate_shard_then_up_shard_over_expert_tp():
    experts = labelled_experts()
    shards = [hf_to_megatron_shard(FC1.format(j=0, e=1), experts.__getitem__, model_type=MT,
                                   tp_rank=r, tp_size=2, expert_offset=2)[:, 0].tolist()
              for r in range(2)]
    assert shards == [[1300, 2300], [1310, 2310]]  # expert 3: gate row r, up row r
    down = hf_to_megatron_shard(FC2.format(j=0, e=1), experts.__getitem__, model_type=MT,
                                tp_rank=1, tp_size=2, expert_offset=2)
    assert torch.equal(down, experts[L.format(i=0) + "experts.3.down_proj.weight"][:, 1:])


@pytest.mark.parametrize("layout", ["hub", "transformers"])
def test_a_file_reads_the_same_experts_in_either_layout(tmp_path, layout):
    reader = HFCheckpointReader(fused_file(tmp_path, layout)[0])
    assert reader.layout(L.format(i=0) + "experts.gate_up_proj") == layout
    for name, tensor in labelled_experts().items():
        assert torch.equal(reader(name), tensor), name


def test_experts_are_written_fused_in_the_hub_layout(tmp_path):
    _, stored = fused_file(tmp_path, "hub")
    experts = labelled_experts()
    shards = {}
    for e in range(E):  # Megatron's expert-TP 2 shards, back through the mapping
        for template in (FC1, FC2):
            name = template.format(j=0, e=e)
            shards[name] = [hf_to_megatron_shard(name, experts.__getitem__, model_type=MT,
                                                 tp_rank=r, tp_size=2) for r in range(2)]
    fuser, out = ExpertFuser(MT, E), {}
    for name, parts in shards.items():
        out |= fuser.add(megatron_shards_to_hf(name, parts, model_type=MT))
    fuser.close()
    assert set(out) == set(stored)
    assert all(torch.equal(out[n], stored[n]) for n in stored)
    row = fused_row(L.format(i=0) + "experts.down_proj", MT)
    per_expert = [[experts[L.format(i=0) + f"experts.{e}.down_proj.weight"]] for e in range(E)]
    assert torch.equal(fuse_experts(row, per_expert), stored[L.format(i=0) + "experts.down_proj"])


@pytest.mark.parametrize("hidden, width, tensor", [
    (4, 2, "gate_up_proj"),   # hidden == 2 * moe_intermediate: [E, 4, 4] either way
    (2, 2, "down_proj"),      # hidden == moe_intermediate: [E, 2, 2] either way
])
def test_sizes_that_make_the_layouts_alike_are_refused(hidden, width, tensor):
    row = fused_row(L.format(i=0) + f"experts.{tensor}", MT)
    shape = (E, hidden, 2 * width) if tensor == "gate_up_proj" else (E, width, hidden)
    with pytest.raises(ValueError, match=rf"hidden_size {hidden} and moe_intermediate_size "
                                         rf"{width} .* refusing to guess"):
        fused_layout(row, shape, hidden, width, tensor)


def test_a_checkpoint_with_ambiguous_sizes_is_refused_when_opened(tmp_path):
    experts = {L.format(i=0) + "experts.gate_up_proj": torch.zeros(E, 4, 4),
               L.format(i=0) + "experts.down_proj": torch.zeros(E, 2, 4)}
    save_file(experts, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": MT, "text_config": {
        "hidden_size": 4, "moe_intermediate_size": 2}}))
    with pytest.raises(ValueError, match="refusing to guess"):
        HFCheckpointReader(tmp_path)


def test_a_shape_of_neither_layout_is_refused_naming_both():
    row = fused_row(L.format(i=0) + "experts.gate_up_proj", MT)
    with pytest.raises(ValueError, match=r"\(4, 6, 5\): neither the hub's expert layout "
                                         r"\(4, 6, 4\) nor transformers' \(4, 4, 6\)"):
        fused_layout(row, (4, 6, 5), H, I, "gate_up_proj")


def test_per_expert_shapes_fold_into_the_fused_hub_shapes():
    shapes = {n: tuple(t.shape) for n, t in labelled_experts(layer=5).items()}
    folded = fold_expert_shapes({**shapes, "lm_head.weight": (8, H)}, MT)
    assert folded == {L.format(i=5) + "experts.gate_up_proj": (E, H, 2 * I),
                      L.format(i=5) + "experts.down_proj": (E, I, H), "lm_head.weight": (8, H)}
