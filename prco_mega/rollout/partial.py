"""Partial rollouts: generation in chunks, so new weights can arrive mid-sequence.

`PartialRollouts` wraps a rollout engine: each `generate` call samples at most `chunk_tokens`
new tokens per sequence, then calls `between()`, which may load the learner's new weights (the
engine worker's `serve`) and returns the policy version the engine now holds; every unfinished
sequence then continues from its prefix (the prompt with one pad per image, as a request gives
it, plus the tokens so far) under those weights. Each token keeps the version and the behaviour
log-prob of the policy that drew it (`Generation.token_versions`, `Generation.logprobs`), and the
loss uses them per token.

A continuation is a new request: its samples are seeded apart from the first chunk's (a run with
partial rollouts draws other tokens than one without, but the same ones again for the same
weights). Stop strings would be missed across a chunk boundary, so they are refused; stop tokens
and EOS end a sequence in any chunk.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prco_mega.rollout.engine import Generation, GenerationRequest, SamplingSettings

CONTINUATION_KEY_STRIDE = 1 << 24
"""Chunk c's continuation of sample j of request key r is seeded as request
`c * stride + r * n + j`: apart from every first-chunk request of a step."""


def collapse_pads(prompt_ids: Sequence[int], pad_ids: Sequence[int]) -> list[int]:
    """The prompt as a request gives it: each run of image pads (the engine's expansion, one pad
    per merged patch) back to a single pad."""
    out: list[int] = []
    for tok in prompt_ids:
        if not (tok in pad_ids and out and out[-1] == tok):
            out.append(tok)
    return out


@dataclass
class _Sequence:
    """One sample being generated chunk by chunk."""

    request: GenerationRequest
    key: int
    """Its first-chunk request key times n plus its sample index: its continuations' seed."""
    prompt_ids: list[int]
    """The engine's (expanded) prompt ids, from the first chunk."""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] | None = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    finish: str = "length"

    def add(self, gen: Generation, version: int) -> None:
        self.tokens += gen.token_ids
        if self.logprobs is not None and gen.logprobs is not None:
            self.logprobs += gen.logprobs
        else:  # not requested
            self.logprobs = None
        self.versions += [version] * len(gen.token_ids)
        self.finish = gen.finish_reason


class PartialRollouts:
    """A `RolloutEngine` that generates in chunks (see the module doc); every other attribute is
    the wrapped engine's. `between()` -> the policy version after the chunk boundary.
    `any_left(mine)` -> whether any engine still has unfinished sequences: the engines take
    their chunks in step (every boundary is collective when `between` may take weights), so an
    engine whose sequences are done keeps serving boundaries until all are."""

    def __init__(self, engine: Any, chunk_tokens: int, between: Callable[[], int],
                 any_left: Callable[[bool], bool] = bool):
        if chunk_tokens < 1:
            raise ValueError(f"rollout.chunk_tokens ({chunk_tokens}) must be >= 1")
        self.engine, self.chunk_tokens = engine, chunk_tokens
        self.between, self.any_left = between, any_left

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def generate(self, requests: list[GenerationRequest],
                 sampling: SamplingSettings) -> list[list[Generation]]:
        if sampling.stop:
            raise ValueError(f"partial rollouts cannot see stop strings {sampling.stop} across "
                             "chunk boundaries; use stop token ids")
        version = self.between()
        first = self.engine.generate(requests, self._chunk(sampling, sampling.max_new_tokens))
        seqs = []
        for i, (request, gens) in enumerate(zip(requests, first, strict=True)):
            key = (i if request.key is None else request.key) * sampling.n
            for j, gen in enumerate(gens):
                seq = _Sequence(request, key + j, list(gen.prompt_ids))
                seq.add(gen, version)
                seqs.append(seq)
        chunk = 1
        while self.any_left(bool(todo := [s for s in seqs if self._unfinished(s, sampling)])):
            version = self.between()
            self._continue(todo, sampling, chunk, version)
            chunk += 1
        per_request = [seqs[i * sampling.n:(i + 1) * sampling.n] for i in range(len(requests))]
        return [[self._generation(s) for s in group] for group in per_request]

    def _chunk(self, sampling: SamplingSettings, left: int, **changes: Any) -> SamplingSettings:
        return dataclasses.replace(sampling, max_new_tokens=min(self.chunk_tokens, left),
                                   **changes)

    def _unfinished(self, seq: _Sequence, sampling: SamplingSettings) -> bool:
        return seq.finish == "length" and len(seq.tokens) < sampling.max_new_tokens

    def _continue(self, todo: list[_Sequence], sampling: SamplingSettings, chunk: int,
                  version: int) -> None:
        pads = self.engine.placeholder_ids
        # one call per remaining length, so each sequence stops at its own budget
        by_left: dict[int, list[_Sequence]] = {}
        for s in todo:
            by_left.setdefault(sampling.max_new_tokens - len(s.tokens), []).append(s)
        for left, group in sorted(by_left.items()):
            requests = [GenerationRequest(prompt_ids=collapse_pads(s.prompt_ids, pads) + s.tokens,
                                          images=s.request.images,
                                          key=chunk * CONTINUATION_KEY_STRIDE + s.key)
                        for s in group]
            gens = self.engine.generate(requests, self._chunk(sampling, left, n=1))
            for s, (gen,) in zip(group, gens, strict=True):
                s.add(gen, version)

    def _generation(self, s: _Sequence) -> Generation:
        text = self.engine.tokenizer.decode(s.tokens, skip_special_tokens=True)
        return Generation(token_ids=s.tokens, text=text, logprobs=s.logprobs,
                          finish_reason=s.finish, prompt_ids=s.prompt_ids,
                          token_versions=s.versions)
