"""Partial rollouts (`rollout.partial`): generation in chunks that new weights can interrupt.

A deterministic stand-in engine draws token t+1 from the sequence so far and its weights'
version, so what a continuation draws is checkable: without a weight change, chunked generation
equals one uninterrupted call; with new weights after the first chunk, the later tokens are the
new policy's, carry its version and its log-probs, and the learner's batch takes each token's own
behaviour log-prob. The real engine's continuation is checked in tests/vllm/test_partial.py.
"""
from __future__ import annotations

import pytest

from prco_mega.learner.packing import plan_and_pack
from prco_mega.rollout.engine import Generation, GenerationRequest, SamplingSettings
from prco_mega.rollout.partial import PartialRollouts, collapse_pads
from prco_mega.rollout.two_stage import trajectory_of
from prco_mega.types import Role, Slot, Task

PAD, EOS = 9, 7


class Engine:
    """Token t+1 = (sum of the sequence so far + 3 * version) % 13, log-prob -(version + 1) / 10;
    the prompt's image pad expands to three pads, as a VL engine expands it."""

    placeholder_ids = (PAD,)

    def __init__(self):
        self.version, self.calls = 0, []

    class tokenizer:  # noqa: N801  (the engine's tokenizer attribute)
        @staticmethod
        def decode(ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    def generate(self, requests, sampling):
        self.calls.append((len(requests), sampling.max_new_tokens, sampling.n))
        return [[self._one(r, sampling) for _ in range(sampling.n)] for r in requests]

    def _one(self, request, sampling):
        expanded = [t for tok in request.prompt_ids for t in ([tok] * 3 if tok == PAD else [tok])]
        seq, out = list(expanded), []
        while len(out) < sampling.max_new_tokens:
            tok = (sum(seq) + 3 * self.version) % 13
            seq.append(tok)
            out.append(tok)
            if tok == EOS:
                return Generation(out, "", [-(self.version + 1) / 10] * len(out), "stop",
                                  expanded)
        return Generation(out, "", [-(self.version + 1) / 10] * len(out), "length", expanded)


SETTINGS = SamplingSettings(n=2, temperature=1.0, max_new_tokens=12, logprobs=True, seed=5)
REQUESTS = [GenerationRequest(prompt_ids=[1, PAD, 2]), GenerationRequest(prompt_ids=[4, 4])]


def test_pads_collapse_back_to_the_requests_prompt():
    assert collapse_pads([1, 9, 9, 9, 2, 9, 9], (9,)) == [1, 9, 2, 9]


def test_chunks_without_new_weights_equal_one_call():
    whole = Engine().generate(REQUESTS, SETTINGS)
    engine = Engine()
    chunked = PartialRollouts(engine, chunk_tokens=5, between=lambda: 0).generate(REQUESTS,
                                                                                  SETTINGS)
    for w, c in zip(whole, chunked, strict=True):
        for a, b in zip(w, c, strict=True):
            assert (b.token_ids, b.logprobs, b.finish_reason, b.prompt_ids) == (
                a.token_ids, a.logprobs, a.finish_reason, a.prompt_ids)
            assert set(b.token_versions) == {0}
    assert engine.calls[0] == (2, 5, 2) and all(n == 1 for _, _, n in engine.calls[1:])


def test_new_weights_after_the_first_chunk_draw_the_rest_and_each_token_keeps_its_own():
    engine = Engine()

    def between():  # the learner's update lands after the first chunk
        engine.version = 1 if len(engine.calls) >= 1 else 0
        return engine.version

    (gen, _), (other, _) = PartialRollouts(engine, 4, between).generate(REQUESTS, SETTINGS)
    assert gen.token_versions == [0] * 4 + [1] * (len(gen.token_ids) - 4)
    assert gen.logprobs == [-0.1] * 4 + [-0.2] * (len(gen.token_ids) - 4)
    # the continuation is what the new weights draw from the prefix
    cont = Engine()
    cont.version = 1
    prefix = GenerationRequest(prompt_ids=[1, PAD, 2] + gen.token_ids[:4])
    rest = cont.generate([prefix], SamplingSettings(n=1, max_new_tokens=8, logprobs=True))[0][0]
    assert gen.token_ids[4:] == rest.token_ids
    # in the learner's batch every token's behaviour log-prob is the one that drew it
    task = Task(uid="t", question="q", answer="1")
    traj = trajectory_of(gen, Role.OBSERVER, task, group_id=0, policy_version=0, step=0,
                         images=[], slot=Slot(0, 0))
    assert traj.token_versions == gen.token_versions
    (batch,) = plan_and_pack([traj], token_budget=64, dp_size=1, dp_rank=0, level="token")
    mask = batch.loss_mask.bool()
    assert batch.old_logprobs[mask].tolist() == pytest.approx(gen.logprobs)  # float32
