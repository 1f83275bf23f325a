"""Checkpoint conversion, Hugging Face safetensors <-> Megatron distributed checkpoint.

Properties: HF -> Megatron (TP=2, PP=2) -> HF gives back every tensor bit for bit (fp32 and bf16;
the way back also at TP=1 x PP=2 x VPP=2), as a checkpoint that transformers and vLLM load and
that generates the source's greedy tokens; the Megatron checkpoint scores a prompt like the
source (--verify); sources that do not match the mapping are refused with the tensor named; an
interrupted conversion is neither taken for a complete one nor in the way of the next.

One torchrun launch (4 ranks, ~30 s on 2 shared cores), one vLLM engine start; the refusals run
in-process without a launch.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import run_torchrun

INIT_STD = 0.2  # clear argmax margins: greedy tokens then compare engines, not float ties
MAX_NEW = 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from prco_mega.tiny.checkpoint import make_tiny_checkpoint
    from prco_mega.tiny.tokenizer import demo_corpus

    return make_tiny_checkpoint(tmp_path_factory.mktemp("convert") / "tiny",
                                demo_corpus(3000, seed=0), seed=0, init_std=INIT_STD)


def copy_with_tensors(src: Path, dst: Path, edit) -> Path:
    """`src` copied to `dst` with its tensors replaced by `edit(tensors)`."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = edit(load_file(src / "model.safetensors"))
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def tiny_bf16(tiny) -> Path:
    return copy_with_tensors(tiny, tiny.with_name("tiny_bf16"),
                             lambda ts: {k: v.to(torch.bfloat16) for k, v in ts.items()})


@pytest.fixture(scope="module")
def converted(tiny, tiny_bf16, tmp_path_factory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("work")
    result = run_torchrun("convert_roundtrip.py", work, nproc=4,
                          args=["--src", str(tiny), "--src-bf16", str(tiny_bf16),
                                "--work", str(work)])
    return work, result


def hf_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    from prco_mega.bridge.hf_io import HFCheckpointReader

    reader = HFCheckpointReader(model_dir)
    return {name: reader(name)[...] for name in reader.names()}


def assert_bit_exact(a: Path, b: Path) -> None:
    ta, tb = hf_tensors(a), hf_tensors(b)
    assert sorted(ta) == sorted(tb)
    for name in ta:
        assert ta[name].dtype == tb[name].dtype, name
        assert torch.equal(ta[name], tb[name]), name


# ----------------------------------------------------------------------------- one launch
@pytest.mark.distributed
@pytest.mark.parametrize("out", ["hf", "hf_tp1_pp2_vpp2"])
def test_round_trip_is_bit_exact(tiny, converted, out):
    assert_bit_exact(tiny, converted[0] / out)


@pytest.mark.distributed
def test_bf16_round_trip_is_bit_exact(tiny_bf16, converted):
    assert_bit_exact(tiny_bf16, converted[0] / "hf_bf16")
    assert next(iter(hf_tensors(converted[0] / "hf_bf16").values())).dtype == torch.bfloat16


@pytest.mark.distributed
def test_output_is_a_complete_hub_layout_checkpoint(tiny, converted):
    out = converted[0] / "hf"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2  # several files per pipeline stage (400 KB limit)
    assert files == sorted(p.name for p in out.glob("*.safetensors"))
    assert sorted(index["weight_map"]) == sorted(hf_tensors(tiny))
    for name in ("config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "processor_config.json", "chat_template.jinja"):
        assert (out / name).read_bytes() == (tiny / name).read_bytes(), name
    assert (out / "COMPLETE").is_file()
    assert not list(converted[0].glob("*.tmp"))


@pytest.mark.distributed
def test_megatron_checkpoint_scores_like_the_source(converted):
    assert converted[1]["verify_diff"] < 1e-4


@pytest.mark.distributed
def test_interrupted_conversion_is_replaced_and_never_read(tiny, converted, tmp_path):
    from prco_mega.bridge.convert import check_hf_source, megatron_to_hf
    from prco_mega.learner.checkpoint import is_complete

    work = converted[0]
    assert is_complete(work / "mcore")  # a stale mcore.tmp was in the way: replaced
    interrupted = tmp_path / "mcore.tmp"
    shutil.copytree(work / "mcore", interrupted)
    (interrupted / "COMPLETE").unlink()
    for path in (interrupted, tmp_path / "mcore"):  # the .tmp itself, or its final name
        with pytest.raises(ValueError, match="not a complete Megatron checkpoint"):
            megatron_to_hf(path, tmp_path / "out", 1, 1)
    half_hf = shutil.copytree(tiny, tmp_path / "hf.tmp")
    with pytest.raises(ValueError, match="interrupted conversion"):
        check_hf_source(half_hf)


@pytest.mark.distributed
@pytest.mark.vllm
def test_converted_model_generates_like_the_source(tiny, converted):
    pytest.importorskip("vllm")
    from prco_mega.rollout import EngineConfig, GenerationRequest, SamplingSettings, VllmEngine

    out = converted[0] / "hf"
    prompts = greedy_prompts(tiny)
    want = [transformers_greedy(tiny, text, images) for text, images in prompts]
    assert [transformers_greedy(out, text, images) for text, images in prompts] == want
    engine = VllmEngine(out, EngineConfig(dtype="float32", max_model_len=512, seed=0))
    try:
        gens = engine.generate([GenerationRequest(prompt=t, images=i) for t, i in prompts],
                               SamplingSettings(n=1, temperature=0.0, max_new_tokens=MAX_NEW))
    finally:
        engine.close()
    assert [g[0].token_ids for g in gens] == want
    assert all(len(w) > 0 for w in want)


def greedy_prompts(model_dir: Path) -> list[tuple[str, list]]:
    import numpy as np
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    from prco_mega.data.images import normalize_image

    image = normalize_image(Image.fromarray(
        np.random.default_rng(7).integers(0, 256, (56, 56, 3), np.uint8)))

    def chat(question: str, images: list) -> str:
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
        return processor.apply_chat_template([{"role": "user", "content": content}],
                                             tokenize=False, add_generation_prompt=True)

    return [(chat("How many red circles are there?", [image]), [image]),
            (chat("What is two plus three?", []), [])]


def transformers_greedy(model_dir: Path, text: str, images: list) -> list[int]:
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir,
                                                               dtype=torch.float32).eval()
    inputs = processor(text=[text], images=images or None, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW,
                             temperature=None, top_p=None, top_k=None)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


# ----------------------------------------------------------------------------- no launch
def edit_config(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _drop(name):
    return lambda ts: {k: v for k, v in ts.items() if k != name}


def _transpose(name):
    return lambda ts: {**ts, name: ts[name].t().contiguous()}


def _add(name):
    return lambda ts: {**ts, name: torch.zeros(4)}


# The tiny checkpoint stores hub names, as the reader reports them.
BAD_TENSORS = {
    "missing": (_drop("model.layers.1.self_attn.k_proj.bias"),
                r"missing tensors: 'model\.layers\.1\.self_attn\.k_proj\.bias'"),
    "shape": (_transpose("model.layers.0.mlp.down_proj.weight"),
              (r"'model\.layers\.0\.mlp\.down_proj\.weight' has shape \(256, 128\), "
               r"expected \(128, 256\)")),
    "extra": (_add("model.layers.9.self_attn.q_norm.weight"),
              r"extra tensors: 'model\.layers\.9\.self_attn\.q_norm\.weight'"),
}


@pytest.mark.parametrize("case", sorted(BAD_TENSORS))
def test_source_with_wrong_tensors_is_refused_naming_them(tiny, tmp_path, case):
    from prco_mega.bridge.convert import check_hf_source

    edit, message = BAD_TENSORS[case]
    bad = copy_with_tensors(tiny, tmp_path / case, edit)
    with pytest.raises(ValueError, match=message):
        check_hf_source(bad)


def test_unknown_model_type_or_architecture_is_refused(tiny, tmp_path):
    from prco_mega.bridge.convert import check_hf_source

    with pytest.raises(ValueError, match=r"no model family for model_type 'qwen2'; known: "):
        check_hf_source(edit_config(tiny, tmp_path / "qwen2", model_type="qwen2"))
    with pytest.raises(ValueError, match=r"architecture 'Qwen2_5_VLForSequenceClassification'"):
        check_hf_source(edit_config(tiny, tmp_path / "arch",
                                    architectures=["Qwen2_5_VLForSequenceClassification"]))


def test_matching_source_passes_the_check(tiny):
    from prco_mega.bridge.convert import check_hf_source

    cfg, dtype = check_hf_source(tiny)
    assert cfg.model_type == "qwen2_5_vl" and dtype == torch.float32


def test_cli_refuses_before_launching_and_plans_tp_times_pp_ranks(tiny, tmp_path, capsys):
    from prco_mega.cli import main

    bad = copy_with_tensors(tiny, tmp_path / "bad", _drop("lm_head.weight"))
    args = ["convert", "--direction", "hf2mcore", "--dst", str(tmp_path / "out"), "--tp", "2",
            "--pp", "2"]
    assert main([*args, "--src", str(bad)]) == 2
    assert "missing tensors: 'lm_head.weight'" in capsys.readouterr().err
    assert main([*args, "--src", str(tiny), "--tp", "3"]) == 2  # 3 does not divide 4 heads
    assert "tensor_parallel (3) must divide num_attention_heads (4)" in capsys.readouterr().err
    assert main([*args, "--src", str(tiny), "--dry-run"]) == 0
    cmd = capsys.readouterr().out.split()
    assert cmd[cmd.index("--nproc_per_node") + 1] == "4"
    assert cmd[cmd.index("-m", cmd.index("--nproc_per_node")) + 1] == \
        "prco_mega.bridge.convert_cli"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("tp, pp, ep, etp, ranks", [
    (2, 2, 1, None, 4),  # dense: tp * pp
    (1, 1, 2, None, 2),  # EP 2 needs two data-parallel ranks at TP 1
    (2, 1, 2, 1, 2),  # TP 2 x EP 2 with whole experts: the TP ranks carry the experts
    (2, 1, 2, None, 4),  # expert-TP 2 x EP 2 over TP 2: two data-parallel ranks
    (1, 2, 4, 1, 8),
])
def test_convert_launches_the_ranks_an_expert_layout_needs(tp, pp, ep, etp, ranks):
    import argparse

    from prco_mega.bridge.convert_cli import world_size

    assert world_size(argparse.Namespace(tp=tp, pp=pp, ep=ep, etp=etp)) == ranks
