"""The vLLM engine reports the experts it routed each sample to (rollout routing replay, R3).

Properties: with `return_routed_experts` every sample carries [prompt + response, MoE layers,
top_k] expert ids, and as sets per row they are transformers' own router top-k (softmax -> top-k
of `mlp.gate`'s logits) on the same prompt + response and image, for every row of sampled image
and text samples; off, nothing is captured and generation is unchanged.

The engine runs in a child process (this file is its script): vLLM keeps its parallel
groups per process, and a MoE engine cannot start in a process where a dense engine (the
session's `engine` fixture) made them without an expert-parallel group.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from prco_mega.rollout import EngineConfig, GenerationRequest, SamplingSettings
from prco_mega.rollout import vllm_routing as vr

from hf_reference import chat, hf_inputs

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[2]
MAX_MODEL_LEN = 160
SAMPLED = SamplingSettings(n=3, temperature=1.0, max_new_tokens=12, seed=11)


# ---------------------------------------------------------------------- pure helpers
def test_expert_count_from_the_config_of_moe_and_dense_models():
    assert vr.num_routed_experts({"text_config": {"num_experts": 128}}) == 128
    assert vr.num_routed_experts({"num_local_experts": 8}) == 8  # Mixtral's name
    assert vr.num_routed_experts({"text_config": {"hidden_size": 128}}) == 0


def test_ids_take_uint8_up_to_256_experts_else_int16():
    assert vr.routing_dtype(8) == np.uint8 and vr.routing_dtype(256) == np.uint8
    assert vr.routing_dtype(257) == np.int16


def test_captured_blocks_stack_into_tokens_layers_topk():
    layer0 = [np.array([[1, 2], [3, 4]]), np.array([[5, 6]])]  # two forwards
    layer1 = [np.array([[7, 0], [1, 2], [3, 4]])]
    out = vr.stack_routing([layer0, layer1], num_tokens=3, num_experts=8)
    assert out.dtype == np.uint8 and out.shape == (3, 2, 2)
    assert out[:, 0].tolist() == [[1, 2], [3, 4], [5, 6]]
    assert out[:, 1].tolist() == [[7, 0], [1, 2], [3, 4]]


def test_a_layer_that_missed_tokens_is_an_error():
    full, short = [np.zeros((3, 2))], [np.zeros((2, 2))]
    with pytest.raises(RuntimeError, match=r"\[3, 2\] tokens.*expected 3"):
        vr.stack_routing([full, short], num_tokens=3, num_experts=8)
    with pytest.raises(RuntimeError, match="no MoE layer"):
        vr.stack_routing([], num_tokens=3, num_experts=8)


def test_last_row_repeats_to_the_sample_length():
    routing = np.arange(12).reshape(3, 2, 2)
    out = vr.repeat_last_row(routing, 4)
    assert out.shape == (4, 2, 2) and (out[3] == routing[2]).all() and (out[:3] == routing).all()


def test_runner_v2_routing_takes_our_layout():
    routed = np.arange(5 * 2 * 2).reshape(5, 2, 2) % 8  # prompt 3 + generated 3 - 1
    out = vr.from_runner_v2(routed, rows=6, num_experts=8)
    assert out.dtype == np.uint8 and out.shape == (6, 2, 2)
    assert (out[:5] == routed).all() and (out[5] == routed[4]).all()
    # a response whose trailing placeholder was dropped: 5 rows, as returned
    assert (vr.from_runner_v2(routed, rows=5, num_experts=8) == routed).all()
    with pytest.raises(RuntimeError, match="no routed experts"):
        vr.from_runner_v2(np.zeros((0, 2, 2)), rows=3, num_experts=8)


def test_capture_on_cpu_needs_an_eager_engine(tmp_path):
    from prco_mega.rollout import VllmEngine

    with pytest.raises(ValueError, match="enforce_eager"):
        VllmEngine(tmp_path, EngineConfig(return_routed_experts=True, enforce_eager=False))


# ---------------------------------------------------------------------- the engine
def test_dense_model_with_routing_capture_is_refused(tmp_path):
    from prco_mega.rollout import VllmEngine

    (tmp_path / "config.json").write_text(
        '{"model_type": "qwen2_5_vl", "text_config": {"hidden_size": 128, '
        '"num_attention_heads": 4}}')
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path))}.*qwen2_5_vl.*not a mixture"):
        VllmEngine(tmp_path, EngineConfig(return_routed_experts=True))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("routing") / "result.json"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, __file__, str(out)], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"routing capture run exited {proc.returncode}\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return json.loads(out.read_text())


def test_routed_experts_are_transformers_router_choice_for_every_token(run):
    samples = run["sampled"]
    print(f"\nrouting agreement engine vs transformers, per sample: "
          f"{[s['agreement'] for s in samples]}")
    assert len(samples) == 6 and run["distinct_per_request"] == [3, 3]
    for s in samples:
        assert s["shape"] == [s["prompt"] + s["response"], run["layers"], run["top_k"]]
        assert s["dtype"] == "uint8" and s["response"] > 0
        assert s["agreement"] == 1.0  # fp32: the same experts for every token and layer
        assert s["shifted_agreement"] < 0.5  # rows are per position


def test_a_sample_that_fills_max_model_len_repeats_its_last_row(run):
    s = run["full"]
    assert s["finish"] == "length" and s["prompt"] + s["response"] == MAX_MODEL_LEN
    assert s["shape"][0] == MAX_MODEL_LEN
    assert s["agreement_but_last"] == 1.0 and s["last_repeats"]


def test_off_nothing_is_captured_and_generation_is_unchanged(run):
    off = run["off"]
    print(f"\nre-score: {off['routing_s'] / off['samples'] * 1e3:.1f} ms per sample, "
          f"{off['routing_s']:.3f} s for {off['samples']} samples vs generation "
          f"{off['generate_s']:.3f} s")
    assert off["captures_left"] == [0] and off["routing_s_when_off"] == 0.0
    assert off["all_none"] and off["same_tokens"] and off["same_logprobs"]


# ---------------------------------------------------------------------- the child process
def hf_routing(model, processor, text: str, images: list, response: list[int]) -> np.ndarray:
    """[P + L, MoE layers, top_k] transformers' router choice, softmax -> top-k of each decoder
    layer's `mlp.gate` logits, teacher-forced on prompt + response."""
    inputs = hf_inputs(processor, text, images)
    resp = torch.tensor([response], dtype=inputs["input_ids"].dtype)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], resp], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = torch.cat(
            [inputs["mm_token_type_ids"], torch.zeros_like(resp)], dim=1)
    top_k = model.config.text_config.num_experts_per_tok
    gates = [m for n, m in model.named_modules()
             if n.endswith(".mlp.gate") and "language_model" in n]
    picked: list[torch.Tensor] = []
    hooks = [g.register_forward_hook(
        lambda _m, _i, out: picked.append(torch.softmax(out[0].float(), -1).topk(top_k)[1]))
        for g in gates]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in hooks:
            h.remove()
    assert len(picked) == len(gates) > 0
    return torch.stack(picked, dim=1).numpy()


def agreement(ours: np.ndarray, ref: np.ndarray) -> float:
    """Fraction of (position, layer) cells whose expert sets are equal."""
    same = [set(a) == set(b) for a, b in zip(ours.reshape(-1, ours.shape[-1]).tolist(),
                                              ref.reshape(-1, ref.shape[-1]).tolist())]
    return sum(same) / len(same)


def _sampled(engine, model, processor, pairs) -> dict:
    # one request as ids, one as text: both re-score what the engine saw
    requests = [GenerationRequest(prompt_ids=engine.tokenizer.encode(
                    pairs[0][0], add_special_tokens=False), images=pairs[0][1]),
                GenerationRequest(prompt=pairs[1][0])]
    results = engine.generate(requests, SAMPLED)
    out = {"sampled": [], "distinct_per_request": [len({tuple(g.token_ids) for g in gens})
                                                   for gens in results]}
    for (text, imgs), gens in zip(pairs, results):
        for gen in gens:
            ref = hf_routing(model, processor, text, imgs, gen.token_ids)
            assert ref.shape == gen.routed_experts.shape, (ref.shape, gen.routed_experts.shape)
            out["sampled"].append({
                "prompt": len(gen.prompt_ids), "response": len(gen.token_ids),
                "shape": list(gen.routed_experts.shape), "dtype": str(gen.routed_experts.dtype),
                "agreement": agreement(gen.routed_experts, ref),
                "shifted_agreement": agreement(gen.routed_experts[1:], ref[:-1])})
    return out


def _fills_max_model_len(engine, model, processor, text: str, image) -> dict:
    # vLLM cannot run position max_model_len - 1. The generation also leaves the sample's first
    # 128-token KV block in the prefix cache: a re-score reading it would route 31 tokens, not 159.
    settings = SamplingSettings(n=1, temperature=1.0, max_new_tokens=MAX_MODEL_LEN, seed=3)
    (gen,), = engine.generate([GenerationRequest(prompt=text, images=[image])], settings)
    ref = hf_routing(model, processor, text, [image], gen.token_ids)
    ours = gen.routed_experts
    return {"finish": gen.finish_reason, "prompt": len(gen.prompt_ids),
            "response": len(gen.token_ids), "shape": list(ours.shape),
            "agreement_but_last": agreement(ours[:-1], ref[:-1]),
            "last_repeats": bool((ours[-1] == ours[-2]).all())}


def _off(engine, pairs) -> dict:
    requests = [GenerationRequest(prompt=t, images=i) for t, i in pairs]
    on = engine.generate(requests, SAMPLED)
    out = {"captures_left": engine._llm.collective_rpc(vr.installed_captures),
           "routing_s": engine.last_routing_seconds, "samples": sum(len(g) for g in on)}
    engine.return_routed_experts = False
    t0 = time.perf_counter()
    off = engine.generate(requests, SAMPLED)
    out["generate_s"] = time.perf_counter() - t0
    engine.return_routed_experts = True
    on, off = list(itertools.chain(*on)), list(itertools.chain(*off))
    out.update(routing_s_when_off=engine.last_routing_seconds,
               all_none=all(g.routed_experts is None for g in off),
               same_tokens=[g.token_ids for g in on] == [g.token_ids for g in off],
               same_logprobs=[g.logprobs for g in on] == [g.logprobs for g in off])
    return out


def main(out_path: Path) -> None:
    from PIL import Image

    from prco_mega.data.images import normalize_image
    from prco_mega.platform.cpu_torchvision import ensure_torchvision_importable
    from prco_mega.rollout import VllmEngine
    from prco_mega.tiny.checkpoint import make_tiny_checkpoint
    from prco_mega.tiny.tokenizer import demo_corpus

    ensure_torchvision_importable()
    from transformers import AutoProcessor, Qwen3VLMoeForConditionalGeneration

    ckpt = make_tiny_checkpoint(out_path.parent / "tiny_qwen3vl_moe", demo_corpus(3000, seed=0),
                                seed=0, init_std=0.2, family="qwen3_vl_moe")
    engine = VllmEngine(ckpt, EngineConfig(dtype="float32", max_model_len=MAX_MODEL_LEN, seed=0,
                                           return_routed_experts=True))
    model = Qwen3VLMoeForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(ckpt)
    rng = np.random.default_rng(7)  # the 56x56 image of tests/vllm/conftest.py
    image = normalize_image(Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)))
    pairs = [(chat(processor, "How many red circles are there?", True), [image]),
             (chat(processor, "What is two plus three?", False), [])]
    res = {"layers": model.config.text_config.num_hidden_layers,
           "top_k": model.config.text_config.num_experts_per_tok}
    res.update(_sampled(engine, model, processor, pairs))
    res["full"] = _fills_max_model_len(engine, model, processor, pairs[0][0], image)
    res["off"] = _off(engine, pairs)
    engine.close()
    out_path.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
