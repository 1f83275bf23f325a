"""Leakage checks: the rule checker's positives and negatives, and the LLM-judge interface."""
from __future__ import annotations

import pytest

from prco_mega.rewards import leakage
from prco_mega.rewards.leakage import (
    DEFAULT_JUDGE_TEMPLATE,
    MAX_CAPTION_CHARS,
    MAX_GOLD_CHARS,
    GoldTooLongWarning,
    LLMJudgeLeakageChecker,
    RuleLeakageChecker,
    parse_verdict,
    render_judge_prompt,
    rule_leak,
)
from prco_mega.rewards.verifier import GoldAnswer

QUESTION = "How many shapes are there in total?"

LEAKING = [
    ("- 3 red circles\n- 4 blue squares\n- \\boxed{7}", "7"),
    ("- 3 red circles\n- 4 blue squares\nThe answer is 7.", "7"),
    ("- 3 red circles\n- 4 blue squares\nAnswer: 7", "7"),
    ("- 3 red circles\n- 4 blue squares\nThe answer is 8.", "7"),  # a marker leaks whatever follows
    ("- 3 red circles\n- 4 blue squares\n- Therefore there are 7 shapes.", "7"),
    ("- 3 red circles and 4 blue squares, so there are 7 shapes in total.", "7"),
    ("- 3 red circles, 4 blue squares; 3 + 4 = 7", "7"),
    ("- bar A is 12, bar B is 5\n- the difference between A and B is 7", "7"),
    ("- A is 1/4 and B is 1/4; the sum of both is \\frac{1}{2}", "0.5"),
    ("- the two bars are 30 and 60, giving a ratio of 50%", "0.5"),
    ("- AB = 3, BC = 4\n- thus the triangle is isosceles", "isosceles"),
    ("- lengths 10, 12, 14 cm\n- the correct option is (B)", "B"),
    ("- lengths 10, 12, 14 cm\n- hence option B", "B"),
    ("- total = 3 \\times 4 = 12", "12"),
]


@pytest.mark.parametrize("caption, gold", LEAKING)
def test_rule_checker_flags_stated_answers(caption, gold):
    assert rule_leak(caption, gold) == 1


NOT_LEAKING = [
    # values read from the image, even one equal to the gold, are facts, not answers
    ("- 3 red circles\n- 4 blue squares", "7"),
    ("- 3 red circles\n- 4 blue squares", "3"),
    ("- there are 7 shapes: 3 red circles and 4 blue squares", "7"),
    ("- AB = 5\n- BC = 7\n- angle C = 90°", "7"),
    ("- bar A: 12.5\n- bar B: 7", "7"),
    # a conclusion that does not state the gold
    ("- 3 red circles and 4 blue squares, so the circles are fewer", "7"),
    ("- 2 + 2 = 4 squares in the top row", "7"),
    ("- The Total bar is 20", "20"),  # a bar labelled "Total" is a read fact
    ("- options: (A) 10 cm (B) 12 cm (C) 14 cm", "B"),
    ("", "7"),
]


@pytest.mark.parametrize("caption, gold", NOT_LEAKING)
def test_rule_checker_passes_observations(caption, gold):
    assert rule_leak(caption, gold) == 0


def test_rule_checker_batch_interface():
    checker = RuleLeakageChecker()
    captions = [LEAKING[0][0], NOT_LEAKING[0][0]]
    assert checker([QUESTION, QUESTION], captions, ["7", "7"]) == [1, 0]
    with pytest.raises(ValueError, match="same length"):
        checker([QUESTION], captions, ["7", "7"])


class CountingGold(GoldAnswer):
    """GoldAnswer that counts how often a gold is parsed and how many comparisons it serves."""

    parses = 0
    comparisons = 0

    def __init__(self, *args, **kwargs):
        type(self).parses += 1
        super().__init__(*args, **kwargs)

    def matches(self, answer):
        type(self).comparisons += 1
        return super().matches(answer)

    def matches_item(self, item):
        type(self).comparisons += 1
        return super().matches_item(item)


WORST_CAPTIONS = {
    "distinct numbers after one cue": "therefore " + " ".join(f"{i}/{i + 1}" for i in range(5000)),
    "a cue per statement": " ".join(f"thus {i}.5 = 3 + {i}." for i in range(3000)),
    "fractions": " ".join(f"so the \\frac{{{i}}}{{{i + 7}}}" for i in range(3000)),
    "backslashes": ("- therefore 3 + 4 = 5 = 6 " * 5000) + "\\" * 50_000,
}
WORST_GOLDS = {"number": "7/9", "long sum": ("1+" * 200)[:MAX_GOLD_CHARS - 1] + "1",
               "long text": "isosceles " * 25}


@pytest.mark.parametrize("caption", list(WORST_CAPTIONS))
@pytest.mark.parametrize("gold", list(WORST_GOLDS))
def test_rule_checker_worst_case_work(monkeypatch, caption, gold):
    """At the caps (a 16 kB caption, a gold of MAX_GOLD_CHARS): the gold is parsed once and
    each distinct token after a cue is compared at most once."""
    monkeypatch.setattr(leakage, "GoldAnswer", CountingGold)
    CountingGold.parses = CountingGold.comparisons = 0
    text = WORST_CAPTIONS[caption][:MAX_CAPTION_CHARS]
    assert len(WORST_GOLDS[gold]) <= MAX_GOLD_CHARS
    assert rule_leak(WORST_CAPTIONS[caption], WORST_GOLDS[gold]) in (0, 1)
    assert CountingGold.parses == 1
    distinct_tokens = len(set(leakage._NUMBER_TOKEN.findall(text)))
    assert CountingGold.comparisons <= distinct_tokens


def test_gold_over_the_cap_is_reported_and_only_markers_count():
    long_gold = "7" + " " * MAX_GOLD_CHARS
    with pytest.warns(GoldTooLongWarning, match="over the rule leakage checker's cap"):
        assert rule_leak("- 3 + 4 = 7, so there are 7 shapes in total", long_gold) == 0
    assert rule_leak("- the answer is 7", long_gold) == 1  # markers need no gold
    checker = RuleLeakageChecker()
    with pytest.warns(GoldTooLongWarning):
        checker([QUESTION] * 2, ["- 3 circles", "- 4 squares"], ["7", long_gold])
    assert (checker.stats.checked, checker.stats.golds_over_cap) == (2, 1)


def test_leaked_value_is_found_with_the_gold_in_any_spelling():
    assert rule_leak("- the two bars are 1 and 2, so the ratio is \\frac{1}{2}", "0.5") == 1
    assert rule_leak("- so the total is 1,000 cm", "1000\\text{ cm}") == 1
    assert rule_leak("- so the total is 1,000 cm", "999 cm") == 0
    assert rule_leak("- therefore x = 5", "x=5") == 1  # a labelled value is its value
    assert rule_leak("- therefore the area is 5", "x^2=5") == 0  # a relation is not its side


# ----------------------------------------------------------------------------------- LLM judge


@pytest.mark.parametrize("reply, verdict", [
    ("VERDICT: YES", 1),
    ("VERDICT: NO", 0),
    ("The caption lists counts only.\nVERDICT: **NO**", 0),
    ("It says 'the answer is 7'. Verdict - yes", 1),
    ("VERDICT: NO\n...on reflection, VERDICT: YES", 1),  # the last verdict wins
    ("<think>maybe verdict: yes?</think>VERDICT: NO", 0),  # reasoning before </think> is ignored
    ("Yes, it states the total.", 1),
    ("No.", 0),
    ("The description does not reveal it, so no.", 0),
    ("I cannot tell.", None),
    ("Yes and no.", 1),  # the first word decides
    ("It might, yes; it might, no.", None),
    ("", None),
])
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_judge_prompt_substitutes_once_and_keeps_braces():
    caption = "- set {1, 2}; the text {answer} appears on the sign"
    prompt = render_judge_prompt(DEFAULT_JUDGE_TEMPLATE, QUESTION, caption, "7")
    assert caption in prompt  # the caption's own "{answer}" is not replaced
    assert "Correct answer: 7" in prompt
    assert QUESTION in prompt
    assert "{question}" not in prompt and "{caption}" not in prompt


class CannedJudge:
    """A deterministic generate_fn: answers YES when the prompt's caption contains 'seven'."""

    def __init__(self):
        self.prompts: list[str] = []

    def __call__(self, prompts: list[str]) -> list[str]:
        self.prompts.extend(prompts)
        replies = []
        for prompt in prompts:
            caption = prompt.split("<<<", 1)[1].split(">>>", 1)[0]
            if "garbled" in caption:
                replies.append("hmm")
            else:
                replies.append("VERDICT: YES" if "seven" in caption else "Looks fine.\nVERDICT: NO")
        return replies


def test_llm_judge_maps_verdicts_and_counts_unparseable():
    judge = CannedJudge()
    checker = LLMJudgeLeakageChecker(judge)
    captions = ["- three and four make seven", "- 3 red circles", "- garbled"]
    leaks = checker([QUESTION] * 3, captions, ["7"] * 3)
    assert leaks == [1, 0, 1]  # unparseable counts as a leak by default
    assert len(judge.prompts) == 3 and "- 3 red circles" in judge.prompts[1]
    assert (checker.stats.judged, checker.stats.leaks, checker.stats.unparseable) == (3, 2, 1)


def test_llm_judge_unparseable_can_count_as_clean():
    checker = LLMJudgeLeakageChecker(CannedJudge(), unparseable_is_leak=False)
    assert checker([QUESTION], ["- garbled"], ["7"]) == [0]
    assert checker.stats.unparseable == 1


def test_llm_judge_custom_template_and_errors():
    template = "Q={question} C={caption} A={answer}. Leak?"
    seen = []

    def generate(prompts):
        seen.extend(prompts)
        return ["NO"] * len(prompts)

    checker = LLMJudgeLeakageChecker(generate, template=template)
    assert checker(["q1"], ["c1"], ["a1"]) == [0]
    assert seen == ["Q=q1 C=c1 A=a1. Leak?"]
    with pytest.raises(ValueError, match="caption"):
        LLMJudgeLeakageChecker(generate, template="no placeholder")
    with pytest.raises(ValueError, match="replies"):
        LLMJudgeLeakageChecker(lambda p: [], template=template)(["q"], ["c"], ["a"])


@pytest.mark.parametrize("caption, gold, leak", [
    ("- there are 7 shapes in total", "7", 1),
    ("- 3 red circles, 4 blue squares, 7 shapes in total", "7", 1),
    ("- 3 red circles, 4 blue squares, 7 shapes in total", "3", 0),  # 3 is a read count
])
def test_rule_checker_trailing_conclusions(caption, gold, leak):
    assert rule_leak(caption, gold) == leak


def test_judge_prompt_and_verdict_at_their_sizes():
    """render_judge_prompt is linear in its inputs; parse_verdict reads a bounded tail."""
    caption = "- {answer} {caption} " * (MAX_CAPTION_CHARS // 20)
    prompt = render_judge_prompt(DEFAULT_JUDGE_TEMPLATE, QUESTION, caption, "7")
    assert prompt.count(caption) == 1 and len(prompt) < len(DEFAULT_JUDGE_TEMPLATE) + len(caption) + 100
    long_reply = "<think>" + "verdict: yes " * 100_000 + "</think>" + "x" * 1_000_000 + "VERDICT: NO"
    assert parse_verdict(long_reply) == 0
    assert parse_verdict("VERDICT: YES" + " " * 1_000_000) is None  # beyond the read tail
    checker = LLMJudgeLeakageChecker(lambda prompts: ["VERDICT: NO"] * len(prompts))
    assert checker([QUESTION] * 4, [caption] * 4, ["7"] * 4) == [0, 0, 0, 0]
