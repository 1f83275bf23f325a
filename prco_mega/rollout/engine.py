"""The rollout engine interface: what the two-stage rollout and the weight bridge rely on.

An engine turns prompts (token ids or chat-rendered text, plus PIL images) into sampled responses
with the behaviour policy's log-probs of the sampled tokens, takes new weights as a stream of
Hugging Face-named tensors, and can drop every cache derived from old weights. The vLLM
implementation is `prco_mega.rollout.vllm_engine.VllmEngine`; nothing here imports vLLM.
"""
from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt. Exactly one of `prompt_ids` / `prompt` is given.

    Each image needs one `<|vision_start|><|image_pad|><|vision_end|>` in the prompt, in order, with
    a single pad token (the engine expands it to one pad per merged patch, as the HF processor
    does); `Generation.prompt_ids` returns the expanded ids the learner must use.
    """

    prompt_ids: Sequence[int] | None = None
    """Prompt token ids (chat template already applied)."""
    prompt: str | None = None
    """Prompt text (chat template already applied); tokenized without adding special tokens."""
    images: Sequence[Image] = ()
    """RGB images, in the order of their placeholders in the prompt."""
    key: int | None = None
    """The request's global index among its role's requests of the step: sample j is seeded
    `seed + key * n + j`, so it draws the same tokens whichever engine serves it. None = its
    position in the call."""

    def __post_init__(self) -> None:
        if (self.prompt_ids is None) == (self.prompt is None):
            raise ValueError("GenerationRequest needs exactly one of prompt_ids / prompt "
                             f"(got prompt_ids={self.prompt_ids!r}, prompt={self.prompt!r})")


@dataclass(frozen=True)
class SamplingSettings:
    """Per-role sampling settings of one `generate` call."""

    n: int = 1
    """Samples per request."""
    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 1.0
    top_k: int = -1
    """-1 = off."""
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()
    """Stop strings (the text is cut before them; see vLLM's `stop`)."""
    stop_token_ids: tuple[int, ...] = ()
    """Extra stop token ids besides the model's EOS (which always stops, and is kept)."""
    seed: int | None = None
    """Base seed; request i (or its `key`), sample j draws from seed + i * n + j. None = engine's
    RNG."""
    logprobs: bool = True
    """Return the sampled tokens' log-probs (the behaviour policy)."""

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_new_tokens < 1:
            raise ValueError(f"n ({self.n}) and max_new_tokens ({self.max_new_tokens}) "
                             "must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"temperature ({self.temperature}) must be >= 0 and top_p "
                             f"({self.top_p}) in (0, 1]")


@dataclass
class Generation:
    """One sampled response."""

    token_ids: list[int]
    """[L] response token ids, including the EOS/stop token when generation stopped on it."""
    text: str
    """Decoded response (special tokens skipped, stop strings cut)."""
    logprobs: list[float] | None
    """[L] log-prob of each sampled token under the behaviour policy (see the engine's
    `logprobs_mode`); None when not requested."""
    finish_reason: str
    """"stop" (EOS, stop string or stop id) or "length"."""
    prompt_ids: list[int] = field(default_factory=list)
    """[P] the prompt as the engine saw it (image pads expanded): the learner's prompt ids."""
    token_versions: list[int] | None = None
    """[L] the policy version that drew each token (partial rollouts, `rollout.partial`); None:
    one version drew them all."""
    routed_experts: np.ndarray | None = None
    """[P + L, MoE layers, top_k] the experts the engine's router picked for each position (the
    prompt ids above, then the response tokens) in each MoE decoder layer, in layer order; uint8
    up to 256 experts, else int16. Filled when the engine's `return_routed_experts` is on (routing
    replay), else None."""


@dataclass(frozen=True)
class PushStats:
    """What one `update_weights` call moved."""

    tensors: int
    bytes: int
    seconds: float
    """Validation + engine reload + cache reset."""


class RolloutEngine(abc.ABC):
    """A generation engine holding one copy of the policy's weights."""

    @abc.abstractmethod
    def generate(self, requests: list[GenerationRequest],
                 sampling: SamplingSettings) -> list[list[Generation]]:
        """Sample `sampling.n` responses per request; result[i][j] is sample j of request i."""

    @abc.abstractmethod
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], *,
                       checked_finite: bool = False) -> PushStats:
        """Load Hugging Face-named tensors (any subset of the checkpoint, each fused engine layer
        complete) in place; non-finite tensors are refused with ValueError before they reach the
        engine, unless the caller has refused them already (`checked_finite`, the weight sync's
        pre-check of every shard). Resets the caches derived from the old weights."""

    @abc.abstractmethod
    def weight_groups(self) -> dict[str, list[str]]:
        """Engine layer -> the checkpoint tensor names that must share one `update_weights` call
        (q/k/v weights and biases of a fused QKV layer; gate and up): the sync's bucketing unit."""

    @abc.abstractmethod
    def reset_caches(self, zero_kv: bool = False) -> None:
        """Drop prefix and encoder caches; `zero_kv` also zeroes the KV blocks (after a bad push,
        stale NaN in unused blocks would otherwise poison attention)."""

    def sleep(self, level: int = 1) -> None:
        """Release accelerator memory for a colocated learner (no-op where unsupported): level 1
        keeps a host copy of the weights, level 2 drops them (the next sync pushes them all)."""

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        """Undo `sleep` for `tags` ("weights", "kv_cache"; None = all; no-op where unsupported).
        The loop wakes the weights, pushes new ones, then wakes the KV cache, so the KV blocks
        are never resident beside a weight push."""

    def close(self) -> None:
        """Free the engine's resources."""
