"""The Solver format score F(y) and the Observer caption bullet-list check."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from prco_mega.rewards.format import FORMAT_WEIGHTS, format_checks, format_score, observer_format_ok

W = FORMAT_WEIGHTS


def test_weights_sum_to_one():
    assert sum(W.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("response, expected", [
    ("<think>3 + 4 = 7</think> So \\boxed{7}.", 1.0),
    ("<think>3 + 4 = 7</think>\n\\fbox{7}", 1.0),
    # no think block at all: only the box checks pass
    ("The answer is \\boxed{7}.", W["one_box"] + W["box_nonempty"]),
    # think block never closed: the box is inside the unfinished block
    ("<think>3 + 4 = 7 so \\boxed{7}", W["one_box"] + W["box_nonempty"]),
    # empty think block
    ("<think> </think>\\boxed{7}", 1.0 - W["think_nonempty"]),
    # two boxes (both after the block)
    ("<think>ok</think>\\boxed{7} or \\boxed{8}",
     W["think_block"] + W["think_nonempty"] + W["box_after_think"] + W["box_nonempty"]),
    # a box inside the think block and one after: not "every box after the block"
    ("<think>maybe \\boxed{6}</think>\\boxed{7}",
     W["think_block"] + W["think_nonempty"] + W["box_nonempty"]),
    # box before the think block
    ("\\boxed{7}<think>why</think>", W["think_block"] + W["think_nonempty"] + W["one_box"]
     + W["box_nonempty"]),
    # empty box
    ("<think>hmm</think>\\boxed{ }", 1.0 - W["box_nonempty"]),
    # no box
    ("<think>hmm</think> 7", W["think_block"] + W["think_nonempty"]),
    # think opened twice
    ("<think>a<think>b</think>\\boxed{7}", W["one_box"] + W["box_nonempty"]),
    # closing tag before the opening tag
    ("</think>x<think>\\boxed{7}", W["one_box"] + W["box_nonempty"]),
    ("", 0.0),
])
def test_format_score_hand_cases(response, expected):
    assert format_score(response) == pytest.approx(expected)


def test_perfect_response_scores_exactly_one():
    assert format_score("<think>r</think>\\boxed{1}") == 1.0


def test_prefilled_think_tag_is_read_as_part_of_the_response():
    response = "3 + 4 = 7</think> \\boxed{7}"
    assert format_score(response, think_prefilled=True) == 1.0
    assert format_score(response) < 1.0
    assert format_checks(response, think_prefilled=True)["think_block"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["<think>", "</think>", "\\boxed{", "\\fbox{", "{", "}", "7", " ",
                                 "x", "\n"]), max_size=100), st.text(max_size=50))
def test_format_score_stays_in_unit_interval(pieces, noise):
    text = "".join(pieces) + noise
    assert 0.0 <= format_score(text) <= 1.0
    assert 0.0 <= format_score(text, think_prefilled=True) <= 1.0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["<think>", "</think>", "\\boxed{", "{", "}", "7", " "]),
                max_size=80))
def test_format_score_is_a_sum_of_passing_weights(pieces):
    text = "".join(pieces)
    checks = format_checks(text)
    assert format_score(text) == pytest.approx(sum(W[k] for k, ok in checks.items() if ok))


@pytest.mark.parametrize("caption, ok", [
    ("- 3 red circles\n- 4 blue squares", True),
    ("* bar A: 12\n* bar B: 5", True),
    ("1. AB = 5\n2. angle C = 90°", True),
    ("The image shows:\n- 3 red circles\n- 4 blue squares", True),
    ("There are 3 red circles and 4 blue squares.", False),
    ("Intro\nmore prose\n- one bullet", False),  # most lines are prose
    ("- 3 red circles\n- so \\boxed{7}", False),
    ("", False),
])
def test_observer_caption_bullet_check(caption, ok):
    assert observer_format_ok(caption) is ok
