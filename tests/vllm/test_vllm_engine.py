"""The vLLM rollout engine against Hugging Face transformers on the same tiny random Qwen2.5-VL.

Properties: vLLM's greedy tokens equal transformers' `generate`; its sampled-token log-probs equal
transformers' log_softmax(logits / T) at those tokens (the learner's behaviour policy); weight
pushes land (the engine then generates what transformers generates with the pushed weights); bad
pushes are refused and leave the engine working; seeded n>1 sampling is reproducible.
"""
from __future__ import annotations

import math
import time

import psutil
import pytest
import torch
from prco_mega.rollout import GenerationRequest, SamplingSettings

from hf_reference import (chat, hf_greedy, hf_inputs, hf_token_logprobs, load_hf_model,
                          write_perturbed_checkpoint)

pytestmark = pytest.mark.vllm

GREEDY = SamplingSettings(n=1, temperature=0.0, max_new_tokens=12)
TOL = 1e-4


def prompts(processor, image):
    """(text, images) pairs: two image+text prompts and one text-only prompt."""
    return [(chat(processor, "How many red circles are there?", True), [image]),
            (chat(processor, "Which bar is the largest?", True), [image]),
            (chat(processor, "What is two plus three?", False), [])]


def requests_of(pairs, as_ids: bool = False, tokenizer=None):
    if as_ids:
        return [GenerationRequest(prompt_ids=tokenizer.encode(t, add_special_tokens=False),
                                  images=imgs) for t, imgs in pairs]
    return [GenerationRequest(prompt=t, images=imgs) for t, imgs in pairs]


def assert_greedy_matches(engine, model, processor, pairs):
    results = engine.generate(requests_of(pairs), GREEDY)
    for (text, imgs), (gen,) in zip(pairs, results):
        assert gen.token_ids == hf_greedy(model, processor, text, imgs, GREEDY.max_new_tokens)
        ref = hf_token_logprobs(model, processor, text, imgs, gen.token_ids)
        assert max(abs(a - b) for a, b in zip(gen.logprobs, ref)) < TOL
    return [r[0].token_ids for r in results]


def test_generates_from_image_text_and_text_only_prompts(engine, processor, image):
    pairs = prompts(processor, image)
    by_text = engine.generate(requests_of(pairs), GREEDY)
    by_ids = engine.generate(requests_of(pairs, as_ids=True, tokenizer=engine.tokenizer), GREEDY)
    for (text, imgs), (a,), (b,) in zip(pairs, by_text, by_ids):
        assert a.token_ids == b.token_ids and len(a.token_ids) > 0
        assert len(a.logprobs) == len(a.token_ids) and all(x <= 0 for x in a.logprobs)
        assert a.finish_reason in ("stop", "length")
        # The engine's prompt ids (image pads expanded) are exactly the HF processor's input ids,
        # so the learner can score the same sequence.
        assert a.prompt_ids == hf_inputs(processor, text, imgs)["input_ids"][0].tolist()
    pad = engine.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert by_text[0][0].prompt_ids.count(pad) == 4  # 56x56 px -> 4x4 patches -> 2x2 merged


def test_greedy_output_and_logprobs_match_transformers(engine, hf_model, processor, image):
    assert_greedy_matches(engine, hf_model, processor, prompts(processor, image))


def test_sampled_logprobs_are_the_temperature_scaled_policy(engine, hf_model, processor, image):
    pairs = prompts(processor, image)[:2]
    settings = SamplingSettings(n=2, temperature=0.7, max_new_tokens=10, seed=5)
    for (text, imgs), gens in zip(pairs, engine.generate(requests_of(pairs), settings)):
        for gen in gens:
            ref = hf_token_logprobs(hf_model, processor, text, imgs, gen.token_ids, 0.7)
            assert max(abs(a - b) for a, b in zip(gen.logprobs, ref)) < TOL


def test_update_weights_then_output_matches_transformers_with_new_weights(
        engine, hf_model, processor, image, tiny_dir, tmp_path):
    from safetensors.torch import load_file

    pairs = prompts(processor, image)
    before = [r[0].token_ids for r in engine.generate(requests_of(pairs), GREEDY)]
    new = write_perturbed_checkpoint(tiny_dir, tmp_path / "perturbed", scale=0.3, seed=1)
    try:
        stats = engine.update_weights(new.items())
        assert stats.tensors == len(new) == len(engine.shapes)
        assert stats.bytes == sum(t.numel() * 4 for t in new.values())
        after = assert_greedy_matches(engine, load_hf_model(tmp_path / "perturbed"), processor,
                                      pairs)
        assert after != before  # the push changed the policy
    finally:
        engine.update_weights(load_file(tiny_dir / "model.safetensors").items())
    assert_greedy_matches(engine, hf_model, processor, pairs)


def test_partial_push_of_whole_layers_matches_transformers(
        engine, processor, image, tiny_dir, tmp_path):
    """Pushing layer by layer (as the bridge's buckets do) equals pushing everything at once."""
    from safetensors.torch import load_file

    new = write_perturbed_checkpoint(tiny_dir, tmp_path / "perturbed", scale=0.3, seed=2)
    try:
        for names in engine.weight_groups().values():
            engine.update_weights((n, new[n]) for n in names)
        assert_greedy_matches(engine, load_hf_model(tmp_path / "perturbed"), processor,
                              prompts(processor, image)[:2])
    finally:
        engine.update_weights(load_file(tiny_dir / "model.safetensors").items())


def test_nan_push_is_refused_and_engine_still_generates(engine, hf_model, processor, image,
                                                       tiny_dir, tmp_path):
    new = write_perturbed_checkpoint(tiny_dir, tmp_path / "perturbed", scale=0.3, seed=3)
    name = "model.layers.1.self_attn.v_proj.weight"
    new[name][0, 0] = math.nan
    with pytest.raises(ValueError, match=f"refused: {name} has 1 non-finite"):
        engine.update_weights(new.items())
    assert engine.kv_cache_summary()["nonfinite"] == 0
    assert_greedy_matches(engine, hf_model, processor, prompts(processor, image))


def test_pushes_that_would_corrupt_the_engine_are_refused(engine, tiny_dir):
    from safetensors.torch import load_file

    base = load_file(tiny_dir / "model.safetensors")
    q = "model.layers.0.self_attn.q_proj.weight"
    with pytest.raises(ValueError, match="splits fused engine layer .*qkv_proj"):
        engine.update_weights([(q, base[q])])
    gate = "model.layers.2.mlp.gate_proj.weight"
    with pytest.raises(ValueError, match="splits fused engine layer .*gate_up_proj"):
        engine.update_weights([(gate, base[gate])])
    with pytest.raises(ValueError, match="shape"):
        engine.update_weights([("lm_head.weight", base["lm_head.weight"][:-1])])
    with pytest.raises(ValueError, match="not in the checkpoint"):
        engine.update_weights([("model.language_model.norm.weight", base["model.norm.weight"])])


def test_seeded_sampling_returns_n_distinct_reproducible_samples(engine, processor, image):
    pairs = prompts(processor, image)
    settings = SamplingSettings(n=4, temperature=1.0, max_new_tokens=12, seed=123)
    first = engine.generate(requests_of(pairs), settings)
    again = engine.generate(requests_of(pairs), settings)
    other = engine.generate(requests_of(pairs), SamplingSettings(**{**settings.__dict__,
                                                                    "seed": 321}))
    for gens, gens_again, gens_other in zip(first, again, other):
        assert len(gens) == 4
        assert len({tuple(g.token_ids) for g in gens}) >= 3
        for g in gens:
            assert len(g.logprobs) == len(g.token_ids)
            assert all(math.isfinite(x) and x <= 0 for x in g.logprobs)
        assert [g.token_ids for g in gens] == [g.token_ids for g in gens_again]
        assert [g.token_ids for g in gens] != [g.token_ids for g in gens_other]


def test_zeroing_the_kv_cache_leaves_generation_correct(engine, hf_model, processor, image):
    pairs = prompts(processor, image)
    engine.generate(requests_of(pairs), GREEDY)
    assert engine.kv_cache_summary()["nonzero"] > 0
    engine.reset_caches(zero_kv=True)
    assert engine.kv_cache_summary()["nonzero"] == 0
    assert_greedy_matches(engine, hf_model, processor, pairs)


def test_engine_memory_is_bounded(engine):
    """The KV cache is the configured 1 GiB, not vLLM's ~20 GiB CPU default."""
    kv = engine.kv_cache_summary()["bytes"]
    assert 0.5 * 2**30 < kv <= 1.01 * 2**30
    assert psutil.Process().memory_info().rss < 6 * 2**30


def test_throughput_32_prompts_times_4_samples(engine, processor, image):
    questions = [f"How many shapes are in row {i}?" for i in range(32)]
    reqs = [GenerationRequest(prompt=chat(processor, q, True), images=[image]) for q in questions]
    settings = SamplingSettings(n=4, temperature=1.0, max_new_tokens=32, seed=0)
    t0 = time.perf_counter()
    results = engine.generate(reqs, settings)
    seconds = time.perf_counter() - t0
    assert [len(r) for r in results] == [4] * 32
    # a sample that starts with a vision placeholder is empty (the placeholder is dropped)
    assert all(len(g.logprobs) == len(g.token_ids) for r in results for g in r)
    assert sum(len(g.token_ids) > 0 for r in results for g in r) > 100
    tokens = sum(len(g.token_ids) for r in results for g in r)
    print(f"\nengine start {engine.start_seconds:.1f} s; 32 prompts x n=4: {tokens} tokens in "
          f"{seconds:.2f} s = {tokens / seconds:.0f} tokens/s")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU attention kernel limits only")
def test_cpu_engine_refuses_head_dim_without_a_kernel(tmp_path):
    """vLLM's CPU attention has no head_dim-16 kernel: refused at start, naming the value."""
    from prco_mega.tiny.checkpoint import make_tiny_checkpoint
    from prco_mega.tiny.tokenizer import demo_corpus
    from prco_mega.families.qwen2_5_vl.tiny import TinySizes
    from prco_mega.rollout import VllmEngine

    hd16 = TinySizes(hidden_size=64, intermediate_size=128, mrope_section=(2, 3, 3))
    out = make_tiny_checkpoint(tmp_path / "hd16", demo_corpus(500, seed=0), sizes=hd16)
    with pytest.raises(ValueError, match=r"head_dim \(16\)"):
        VllmEngine(out)


def test_a_sampled_vision_placeholder_ends_the_response_and_is_dropped():
    """A learner sequence would read a sampled <|image_pad|> as an image slot with no image."""
    from types import SimpleNamespace

    from prco_mega.rollout.vllm_engine import _to_generation

    step = lambda tok, lp: {tok: SimpleNamespace(logprob=lp)}  # noqa: E731
    done = SimpleNamespace(token_ids=[5, 9, 77], logprobs=[step(5, -1.0), step(9, -2.0),
                                                           step(77, -3.0)],
                           text="ab", finish_reason="stop")
    gen = _to_generation(done, [1, 2], drop_last=(77, 78))
    assert gen.token_ids == [5, 9] and gen.logprobs == [-1.0, -2.0]
    kept = _to_generation(done, [1, 2], drop_last=(78,))
    assert kept.token_ids == [5, 9, 77] and len(kept.logprobs) == 3


def test_engine_stops_on_vision_placeholders(engine):
    ids = engine.placeholder_ids
    names = engine.tokenizer.convert_ids_to_tokens(list(ids))
    assert sorted(names) == sorted(["<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                                    "<|video_pad|>"])
