"""The LLM-judge leakage checker served by a rollout engine (any model the engine holds).

`LLMJudgeLeakageChecker` (rewards) only needs `generate_fn(prompts) -> replies`; this module makes
one from an engine: each judge prompt becomes a text-only user turn in the chat format and is
decoded greedily, so a verdict is a deterministic function of (question, caption, answer) and the
judge's weights.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from prco_mega.rewards.leakage import DEFAULT_JUDGE_TEMPLATE, LLMJudgeLeakageChecker
from prco_mega.roles.prompts import render_chat
from prco_mega.rollout.engine import GenerationRequest, RolloutEngine, SamplingSettings
from prco_mega.rollout.two_stage import strip_control_tokens

JUDGE_SYSTEM = "You are a careful and strict grader."


def judge_request(prompt: str, system: str = JUDGE_SYSTEM) -> GenerationRequest:
    """A judge prompt as a text-only chat request, control-token spellings removed: it embeds a
    policy-written caption, and the engine's tokenizer would turn an `<|im_end|>` there into a
    real end of turn and an `<|image_pad|>` into an image placeholder."""
    return GenerationRequest(prompt=render_chat(system, strip_control_tokens(prompt), 0))


def engine_generate_fn(engine: RolloutEngine, max_new_tokens: int = 256,
                       system: str = JUDGE_SYSTEM,
                       stop: Sequence[str] = ()) -> Callable[[list[str]], list[str]]:
    """`generate_fn` for `LLMJudgeLeakageChecker`: greedy replies of `engine`, one per prompt
    (each sent as `judge_request(prompt, system)`)."""
    settings = SamplingSettings(n=1, temperature=0.0, max_new_tokens=max_new_tokens,
                                stop=tuple(stop), logprobs=False)

    def generate(prompts: list[str]) -> list[str]:
        requests = [judge_request(p, system) for p in prompts]
        return [samples[0].text for samples in engine.generate(requests, settings)]

    return generate


def engine_judge(engine: RolloutEngine, max_new_tokens: int = 256, template: str | None = None,
                 unparseable_is_leak: bool = True):
    """`LLMJudgeLeakageChecker` served by `engine` (shipped judge template unless `template`)."""
    return LLMJudgeLeakageChecker(engine_generate_fn(engine, max_new_tokens),
                                  template=template or DEFAULT_JUDGE_TEMPLATE,
                                  unparseable_is_leak=unparseable_is_leak)
