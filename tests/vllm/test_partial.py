"""Partial rollouts on the real engine: a sequence continued from its prefix (the prompt with one
pad per image plus the tokens so far, and the image again) is what one uninterrupted call draws,
so new weights can take over mid-sequence without the engine losing its place."""
from __future__ import annotations

import pytest

from prco_mega.rollout.engine import GenerationRequest, SamplingSettings
from prco_mega.rollout.partial import PartialRollouts

pytestmark = pytest.mark.vllm


def test_chunked_greedy_generation_with_an_image_equals_one_call(engine, image):
    prompt = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is shown?"
              "<|im_end|>\n<|im_start|>assistant\n")
    requests = [GenerationRequest(prompt=prompt, images=(image,)),
                GenerationRequest(prompt="<|im_start|>user\nhello<|im_end|>\n"
                                  "<|im_start|>assistant\n")]
    greedy = SamplingSettings(n=1, temperature=0.0, max_new_tokens=24, logprobs=True)
    whole = engine.generate(requests, greedy)
    chunked = PartialRollouts(engine, chunk_tokens=5, between=lambda: 0).generate(requests, greedy)
    for (a,), (b,) in zip(whole, chunked, strict=True):
        assert b.token_ids == a.token_ids and b.prompt_ids == a.prompt_ids
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-5
        assert b.finish_reason == a.finish_reason
