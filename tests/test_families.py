"""The families registry: every registered family provides each part the stack asks for, and the
parts agree with each other (the planner counts every parameter of the family's tiny model, the
mapping rows name every tensor of its checkpoint); an unknown model_type is refused, naming the
known ones, wherever the stack looks a family up; reading the registry loads no heavy package."""
from __future__ import annotations

import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from prco_mega.bridge.mapping import family_table, hub_name
from prco_mega.bridge.param_map import ParamMap
from prco_mega.cluster.dims import dims_from_hf_config, model_dims, total_params
from prco_mega.cluster.sizes import ModelDims
from prco_mega.config import RunConfig, from_dict
from prco_mega.families import FAMILIES, family, presets

KINDS = {"replicated", "column", "row", "vocab", "qkv", "gate_up", "prefix"}


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_every_family_provides_each_part(model_type):
    f = family(model_type)
    assert f.model_type == model_type and f.architectures
    assert callable(f.build_model)
    assert f.mapping and all(isinstance(r, ParamMap) and r.kind in KINDS for r in f.mapping)
    assert f.presets and all(isinstance(d, ModelDims) and d.name == name
                             for name, d in f.presets.items())
    assert callable(f.dims_from_config)
    assert all(callable(c) for c in (f.tiny.sizes, f.tiny.config, f.tiny.build,
                                     f.tiny.save_processor))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tiny(request):
    """(family, tiny config, tiny transformers model) with the default tiny sizes."""
    f = family(request.param)
    config = f.tiny.config(f.tiny.sizes())
    return f, config, f.tiny.build(config)


def test_planner_counts_every_parameter_of_the_family_tiny_model(tiny):
    f, config, model = tiny
    counted = total_params(dims_from_hf_config(config.to_dict(), "tiny"))
    assert counted == sum(p.numel() for p in model.parameters())


def _hf_pattern(row: ParamMap) -> re.Pattern:
    if row.kind == "prefix":
        return re.compile(re.escape(row.hf[0]) + ".+")
    # expert rows: per-expert names ({e}) and the file's fused tensor of all experts of a layer
    names = row.hf + ((row.experts,) if row.experts else ())
    return re.compile("|".join(re.escape(h).replace(r"\{i\}", r"\d+").replace(r"\{e\}", r"\d+")
                               for h in names))


def test_mapping_rows_name_every_tensor_of_the_family_tiny_checkpoint(tiny):
    f, _, model = tiny
    patterns = [_hf_pattern(row) for row in family_table(f.model_type)]
    names = [hub_name(n, f.model_type) for n in model.state_dict()]
    unmapped = [n for n in names if not any(p.fullmatch(n) for p in patterns)]
    assert names and not unmapped, unmapped


def test_presets_of_all_families_are_one_namespace():
    merged = presets()
    assert len(merged) == sum(len(f.presets) for f in FAMILIES.values())
    for f in FAMILIES.values():
        for name, dims in f.presets.items():
            assert model_dims(name) is dims


def test_unknown_model_type_is_refused_naming_the_known_ones(tmp_path):
    from prco_mega.learner.provider import build_model
    from prco_mega.tiny.checkpoint import make_tiny_checkpoint

    known = re.escape(str(sorted(FAMILIES)))
    message = rf"no model family for model_type 'llava'; known: {known}"
    with pytest.raises(ValueError, match=message):
        family("llava")
    with pytest.raises(ValueError, match=message):
        family_table("llava")
    with pytest.raises(ValueError, match=message):
        build_model(SimpleNamespace(model_type="llava"), None)
    with pytest.raises(ValueError, match=message):
        make_tiny_checkpoint(tmp_path / "tiny", ["a b c"], family="llava")
    assert not (tmp_path / "tiny").exists()


def test_config_takes_every_registered_family_and_refuses_another():
    """`model.family` is checked against the registry: a new family needs no edit of the config."""
    for model_type in FAMILIES:
        assert from_dict(RunConfig, {"model": {"family": model_type}}).model.family == model_type
    known = re.escape(str(sorted(FAMILIES)))
    with pytest.raises(ValueError, match=rf"model.family 'llava' .*known: {known}"):
        from_dict(RunConfig, {"model": {"family": "llava"}})


def test_reading_the_registry_loads_no_heavy_package():
    code = ("import sys, prco_mega.families as f, prco_mega.cluster.dims\n"
            "f.presets(); f.family('qwen3_vl').mapping\n"
            "print(sorted(m for m in ('torch', 'transformers', 'megatron', 'vllm') "
            "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name, total, active", [
    ("qwen3-vl-30b-a3b", 31.1e9, 3.3e9),     # huggingface.co/Qwen/Qwen3-VL-30B-A3B-Instruct
    ("qwen3-vl-235b-a22b", 236e9, 22e9),     # huggingface.co/Qwen/Qwen3-VL-235B-A22B-Instruct
])
def test_moe_presets_count_the_published_sizes(name, total, active):
    """Total: every expert of every layer plus the ViT. Active ("A3B"): the language model's
    dense parts and 8 of 128 experts per layer; the published figure is the text model's, so the
    ViT (0.58B) is left out of it."""
    from prco_mega.cluster.dims import active_params, vision_params

    m = model_dims(name)
    assert total_params(m) == pytest.approx(total, rel=0.005)
    assert active_params(m) - vision_params(m.vision) == pytest.approx(active, rel=0.04)
