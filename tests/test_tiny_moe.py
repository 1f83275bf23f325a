"""The tiny Qwen3-VL-MoE (`model.family=qwen3_vl_moe`) is built through the family registry and
saved as vLLM loads it: fused experts in the hub's layout, at sizes that keep that layout apart
from transformers' (hidden is neither the expert width nor twice it) and that vLLM's CPU MoE kernel
takes (hidden % 32 == 0), with `norm_topk_prob: true`; transformers loads it back unchanged."""
import json

import torch

from prco_mega.bridge.hf_io import HFCheckpointReader
from prco_mega.families import family
from prco_mega.tiny.checkpoint import make_tiny_checkpoint
from prco_mega.tiny.tokenizer import demo_corpus


def test_the_tiny_moe_checkpoint_is_in_the_hub_expert_layout(tmp_path):
    out = make_tiny_checkpoint(tmp_path / "tiny", demo_corpus(300, seed=0), seed=0,
                               family="qwen3_vl_moe")
    text = json.loads((out / "config.json").read_text())["text_config"]
    hidden, width = text["hidden_size"], text["moe_intermediate_size"]
    assert text["norm_topk_prob"] is True and hidden % 32 == 0 and hidden not in (width, 2 * width)
    experts = text.get("num_experts", text.get("num_local_experts"))
    assert (experts, text["num_experts_per_tok"]) == (8, 2)
    reader = HFCheckpointReader(out)
    fused = [n for n in reader.names() if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]
    assert len(fused) == 2 * text["num_hidden_layers"]
    assert {reader.layout(n) for n in fused} == {"hub"}
    gate_up = "model.language_model.layers.0.mlp.experts.gate_up_proj"
    assert reader(gate_up).get_shape() == [8, hidden, 2 * width]

    from transformers import AutoConfig, Qwen3VLMoeForConditionalGeneration

    tiny = family("qwen3_vl_moe").tiny
    built = tiny.build(AutoConfig.from_pretrained(out), seed=0).state_dict()
    loaded = Qwen3VLMoeForConditionalGeneration.from_pretrained(out).state_dict()
    assert set(loaded) == set(built)
    assert all(torch.equal(loaded[k], built[k]) for k in built)
