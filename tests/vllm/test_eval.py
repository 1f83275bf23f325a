"""Greedy held-out evaluation on the real vLLM engine with the tiny random Qwen2.5-VL (gibberish
text: these tests check the pipeline the paper evaluates with, read back from the token ids the
engine saw, and that the scores are those of the texts shown)."""
from __future__ import annotations

import json

import pytest
from engine_text import PAD, decode, expanded, image_tokens

from prco_mega.data.captions import needed_readings, perception_accuracy
from prco_mega.data.synthetic import SyntheticConfig, SyntheticTaskSource
from prco_mega.eval.synthetic import evaluate
from prco_mega.rewards.verifier import verify
from prco_mega.rollout.two_stage import engine_eos, request_of, solver_caption

pytestmark = pytest.mark.vllm

IMAGE_SIZE, OBSERVER_TOKENS, SOLVER_TOKENS = 224, 8, 6
IMAGE_TOKENS = image_tokens(IMAGE_SIZE)


@pytest.fixture(scope="module")
def tasks():
    # seed 23: held out from the other vLLM tests' tasks, as the run holds eval tasks out
    return SyntheticTaskSource(SyntheticConfig(image_size=IMAGE_SIZE, seed=23)).batch(0, 4)


def _evaluate(engine, prompts, tasks, mode):
    return evaluate(engine, prompts, tasks, observer_max_tokens=OBSERVER_TOKENS,
                    solver_max_tokens=SOLVER_TOKENS, mode=mode)


@pytest.fixture(scope="module")
def prco_result(engine, prompts, tasks):
    return _evaluate(engine, prompts, tasks, "prco")


def test_one_scored_record_per_task_in_order(prco_result, tasks):
    records = prco_result.records
    assert prco_result.mode == "prco"
    assert [r.uid for r in records] == [t.uid for t in tasks]
    for r, t in zip(records, tasks, strict=True):
        assert r.family == t.family and r.answer == t.answer
        assert 1 <= r.caption_tokens <= OBSERVER_TOKENS and 1 <= r.response_tokens <= SOLVER_TOKENS
        # the scores are those of the texts the record shows
        assert r.correct == verify(r.response, t.answer, t.choices)
        assert r.perception == perception_accuracy(r.caption, t.facts)
        assert 0.0 <= r.perception <= 1.0 and 0.0 <= r.format <= 1.0 and r.leak in (0, 1)


def test_sampled_captions_are_scored_per_task_and_averaged(engine, prompts, tasks, prco_result):
    from prco_mega.rollout.engine import SamplingSettings

    settings = SamplingSettings(n=3, temperature=1.0, max_new_tokens=OBSERVER_TOKENS, seed=5,
                                logprobs=False)
    result = evaluate(engine, prompts, tasks, observer_max_tokens=OBSERVER_TOKENS,
                      solver_max_tokens=SOLVER_TOKENS, sampled_captions=settings)
    # The greedy part is unchanged by also sampling; each task gets the mean of its 3 captions.
    assert [r.caption for r in result.records] == [r.caption for r in prco_result.records]
    sets = engine.generate([request_of(prompts.observer(t)) for t in tasks], settings)
    eos = engine_eos(engine)
    for record, task, gens in zip(result.records, tasks, sets, strict=True):
        scores = [perception_accuracy(solver_caption(g.text, eos), task.facts) for g in gens]
        assert record.sampled_perception == pytest.approx(sum(scores) / 3)
        # per needed fact, the share of the 3 sampled captions that read its value right
        reads = [needed_readings(solver_caption(g.text, eos), task.facts) for g in gens]
        shares = [sum(r[k][1] == truth for r in reads) / 3 for k, (truth, _) in enumerate(reads[0])]
        assert record.sampled_hits == [(t, pytest.approx(s))
                                       for (t, _), s in zip(reads[0], shares, strict=True)]
    assert result.summary()["observer/perception_acc_sampled"] == pytest.approx(
        sum(r.sampled_perception for r in result.records) / len(tasks))
    assert prco_result.summary()["observer/perception_acc_sampled"] is None


def test_summary_aggregates_records_overall_and_per_family(prco_result, tasks):
    summary = json.loads(json.dumps(prco_result.summary()))  # JSON-ready
    records = prco_result.records
    assert summary["tasks"] == 4
    assert summary["solver/accuracy"] == pytest.approx(sum(r.correct for r in records) / 4)
    assert summary["observer/perception_acc"] == pytest.approx(
        sum(r.perception for r in records) / 4)
    assert summary["observer/caption_len"] == pytest.approx(
        sum(r.caption_tokens for r in records) / 4)
    for key in ("solver/accuracy", "observer/perception_acc", "observer/leak_rate",
                "solver/format_rate", "observer/format_rate", "solver/truncated_rate"):
        assert 0.0 <= summary[key] <= 1.0, key
    families = summary["per_family"]
    assert set(families) == {t.family for t in tasks}
    assert sum(f["tasks"] for f in families.values()) == 4
    for family, stats in families.items():
        mine = [r for r in records if r.family == family]
        assert stats["solver/accuracy"] == pytest.approx(sum(r.correct for r in mine) / len(mine))
    assert len(prco_result.to_dict()["records"]) == 4
    # every needed fact of every greedy caption is counted once under its true value
    for record, task in zip(records, tasks, strict=True):
        assert record.readings == needed_readings(record.caption, task.facts)
    by_value = summary["perception_by_value"]
    for family in by_value:
        facts = sum(len(r.readings) for r in records if r.family == family)
        assert sum(v["facts"] for v in by_value[family].values()) == facts


def test_solver_sees_the_image_and_the_observer_caption(engine, prompts, prco_result, tasks):
    """As at test time: the answering prompt is the Solver prompt with the image and the
    Observer's greedy caption."""
    for r, t in zip(prco_result.records, tasks, strict=True):
        text = decode(engine, r.solver_prompt_ids)
        want = prompts.solver(t, r.caption, with_image=True).text
        assert text == expanded(want, IMAGE_TOKENS)
        assert text.count(PAD) == IMAGE_TOKENS
        assert r.caption and r.caption in text and t.question in text


def test_greedy_evaluation_is_repeatable(engine, prompts, tasks, prco_result):
    again = _evaluate(engine, prompts, tasks, "prco")
    assert again.to_dict() == prco_result.to_dict()


def test_single_mode_answers_the_look_and_answer_prompt_and_still_captions(
        engine, prompts, tasks, prco_result):
    result = _evaluate(engine, prompts, tasks, "single")
    assert result.mode == "single" and len(result.records) == 4
    for r, p, t in zip(result.records, prco_result.records, tasks, strict=True):
        assert decode(engine, r.solver_prompt_ids) == expanded(prompts.single(t).text,
                                                               IMAGE_TOKENS)
        # the same policy's Observer prompt, greedy: the same caption as in PRCO mode
        assert r.caption == p.caption and r.perception == p.perception
    assert result.summary()["observer/perception_acc"] is not None


def test_unknown_mode_and_empty_task_list_are_refused(engine, prompts, tasks):
    with pytest.raises(ValueError, match="'both'"):
        _evaluate(engine, prompts, tasks, "both")
    with pytest.raises(ValueError, match="empty"):
        _evaluate(engine, prompts, [], "prco")
