"""Every rule that refuses a parallel layout, through the commands a user types: `prco-mega plan`,
`launch` and `convert` exit 2 with one line `prco-mega: error: ...` naming the numbers, and start
no torchrun (an audit hook in the command's process tree records every child it would start).

The rules are `learner.layout.check_layout`'s, the function the learner runs too. Each command
reads the model's sizes from a config.json: the planner and the launcher through `cluster.model`,
the converter from its source directory, before transformers or Megatron load.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "qwen25vl_7b_h100x8.yaml")  # 8 GPUs: TP 2 x PP 1 x DP 4
TEXT_7B = {"num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
           "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944}
"""Qwen2.5-VL-7B's language model, as its config.json states it."""
HOOK = """import os, sys

def _record(event, args):
    if event == "subprocess.Popen":
        with open(os.environ["PRCO_TEST_SPAWNED"], "a") as f:
            f.write(" ".join(map(str, args[1])) + "\\n")

sys.addaudithook(_record)
"""


def model_config(tmp_path: Path, model_type: str = "qwen2_5_vl", deepstack: int = 0,
                 **sizes) -> Path:
    """A directory holding only a config.json: Qwen2.5-VL-7B's sizes with `sizes` changed
    (`model_type="qwen3_vl"`: with `deepstack` levels)."""
    vision = {"depth": 4, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2,
              "deepstack_visual_indexes": list(range(deepstack))}
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"model_type": model_type, "vision_config": vision, "text_config": {**TEXT_7B, **sizes}}))
    return folder


def refused(tmp_path: Path, *argv: str) -> str:
    """Run `python -m prco_mega.cli ARGV`; assert it exits 2 with one line on stderr and starts
    no torchrun; return that line."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    spawned = tmp_path / "spawned.txt"
    env = {**os.environ, "PRCO_TEST_SPAWNED": str(spawned), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(hook), str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "prco_mega.cli", *argv], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    children = spawned.read_text() if spawned.exists() else ""
    assert "torch.distributed.run" not in children and "torchrun" not in children, children
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prco-mega: error: "), proc.stderr
    return lines[0]


def _plan(*overrides: str) -> list[str]:
    return ["plan", CONFIG, *overrides]


def _launch(*overrides: str) -> list[str]:
    return ["launch", CONFIG, *overrides]


CASES = {  # rule: (command, sizes of the model config (None: the preset), expected text)
    "world is a multiple of tp * pp": (
        _plan("learner.parallel.tensor_parallel=3"), None,
        "world_size (8) must be a multiple of tensor_parallel * pipeline_parallel (3 * 1 = 3)"),
    "tp divides the heads": (
        _launch("learner.parallel.tensor_parallel=8", "cluster.data_parallel=1"), None,
        "tensor_parallel (8) must divide num_attention_heads (28)"),
    "tp divides the KV heads": (
        _plan("learner.parallel.tensor_parallel=8", "cluster.data_parallel=1"),
        dict(num_attention_heads=32), "tensor_parallel (8) must divide num_key_value_heads (4)"),
    "tp divides the vocabulary": (
        _launch(), dict(vocab_size=151937), "tensor_parallel (2) must divide vocab_size (151937)"),
    "tp divides the MLP width": (
        _plan(), dict(intermediate_size=18945),
        "tensor_parallel (2) must divide intermediate_size (18945)"),
    "KV heads divide the heads": (
        _launch(), dict(num_key_value_heads=8),
        "num_key_value_heads (8) must divide num_attention_heads (28)"),
    "pp divides the layers": (
        _plan("learner.parallel.pipeline_parallel=8", "learner.parallel.tensor_parallel=1",
              "cluster.data_parallel=1"), None,
        "pipeline_parallel (8) must divide num_hidden_layers (28)"),
    "pp * vpp divides the layers": (
        _launch("learner.parallel.pipeline_parallel=2",
                "learner.parallel.virtual_pipeline_parallel=4", "cluster.data_parallel=2"), None,
        "pipeline_parallel * virtual_pipeline (2 * 4 = 8) must divide num_hidden_layers (28)"),
    "the engine's tp divides the heads": (
        _plan("engine.tensor_parallel_size=8"), None,
        "engine.tensor_parallel_size (8) must divide num_attention_heads (28)"),
}


@pytest.mark.parametrize("rule", sorted(CASES))
def test_plan_and_launch_refuse_a_layout_the_model_cannot_take(tmp_path, rule):
    argv, sizes, message = CASES[rule]
    if sizes is not None:
        argv = [*argv, f"cluster.model={model_config(tmp_path, **sizes) / 'config.json'}"]
    assert message in refused(tmp_path, *argv)


def test_deepstack_layers_must_sit_on_the_first_stage(tmp_path):
    """Qwen3-VL: three deepstack levels, and TP 2 x PP 2 leaves two of four layers on the first
    stage; launch refuses it as plan does."""
    model = model_config(tmp_path, "qwen3_vl", deepstack=3, num_hidden_layers=4)
    line = refused(tmp_path, *_launch("learner.parallel.pipeline_parallel=2",
                                      "cluster.data_parallel=2",
                                      f"cluster.model={model / 'config.json'}"))
    assert "0-2 (3 levels)" in line and "first stage holds 2 of 4 layers" in line


def test_deepstack_cannot_feed_more_layers_than_the_model_has(tmp_path):
    model = model_config(tmp_path, "qwen3_vl", deepstack=3, num_hidden_layers=2)
    line = refused(tmp_path, *_plan(f"cluster.model={model / 'config.json'}"))
    assert "deepstack feeds 3 decoder layers but the model has only 2" in line


@pytest.mark.parametrize("flags, message", [
    (["--pp", "1", "--vpp", "2"], "virtual_pipeline (2) needs pipeline_parallel >= 2 (got 1)"),
    (["--tp", "0"], "tensor_parallel must be >= 1, got 0"),
    (["--tp", "7"], "tensor_parallel (7) must divide num_key_value_heads (4)"),
])
def test_convert_refuses_from_the_source_config_alone(tmp_path, flags, message):
    src = model_config(tmp_path)
    line = refused(tmp_path, "convert", "--direction", "hf2mcore", "--src", str(src), "--dst",
                   str(tmp_path / "out"), *flags)
    assert message in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--ep", "3"], "expert_parallel (3) must divide num_experts (128)"),
    (["--ep", "2", "--etp", "5"], "expert_tensor_parallel (5) must divide moe_intermediate_size "
                                  "(768)"),
    (["--ep", "0"], "expert_parallel must be >= 1, got 0"),
])
def test_convert_refuses_an_expert_layout_the_model_cannot_take(tmp_path, flags, message):
    """Qwen3-VL-30B-A3B's expert sizes (128 experts of width 768), from config.json alone."""
    src = model_config(tmp_path, "qwen3_vl_moe", num_experts=128, moe_intermediate_size=768)
    line = refused(tmp_path, "convert", "--direction", "hf2mcore", "--src", str(src), "--dst",
                   str(tmp_path / "out"), *flags)
    assert message in line
    assert not (tmp_path / "out").exists()


def test_convert_refuses_expert_parallel_for_a_dense_model(tmp_path):
    line = refused(tmp_path, "convert", "--direction", "hf2mcore", "--src",
                   str(model_config(tmp_path)), "--dst", str(tmp_path / "out"), "--ep", "2")
    assert "expert_parallel (2) and expert_tensor_parallel (1) need a mixture-of-experts" in line


@pytest.fixture(scope="module")
def tiny_qwen3vl_deepstack3(tmp_path_factory) -> Path:
    """The tiny Qwen3-VL checkpoint (4 layers) with three deepstack levels."""
    from prco_mega.families.qwen3_vl.tiny import TinyQwen3VLSizes
    from prco_mega.tiny.checkpoint import make_tiny_checkpoint
    from prco_mega.tiny.tokenizer import demo_corpus

    sizes = TinyQwen3VLSizes(vision_depth=3, deepstack_visual_indexes=(0, 1, 2))
    return make_tiny_checkpoint(tmp_path_factory.mktemp("q3") / "tiny", demo_corpus(3000, seed=0),
                                sizes=sizes, family="qwen3_vl")


def test_convert_refuses_deepstack_off_the_first_stage_before_torchrun(
        tmp_path, tiny_qwen3vl_deepstack3):
    """A complete checkpoint whose three deepstack levels PP=2 cannot keep on the first stage
    (two layers there): one line and exit 2, not torchrun's ChildFailedError and exit 1."""
    line = refused(tmp_path, "convert", "--direction", "hf2mcore", "--src",
                   str(tiny_qwen3vl_deepstack3), "--dst", str(tmp_path / "out"), "--pp", "2")
    assert "pipeline_parallel=2 the first stage holds 2 of 4 layers" in line
    assert "put >= 3 layers on the first" in line
    assert not (tmp_path / "out").exists()
