"""Warm-start demonstrations: faithful without noise, consistently wrong with it."""
import random

import pytest

from prco_mega.data.captions import perception_accuracy
from prco_mega.tiny.demos import DemoNoise, demonstrations
from prco_mega.data.synthetic import SyntheticConfig, SyntheticTaskSource
from prco_mega.rewards import format_score, rule_leak, verify

TASKS = [SyntheticTaskSource(SyntheticConfig(image_size=224, seed=11)).task(i) for i in range(120)]


def test_noiseless_demos_perceive_everything_and_answer_right():
    rng = random.Random(0)
    for task in TASKS:
        caption, answer = demonstrations(task, rng, DemoNoise(drop=0.0, corrupt=0.0))
        assert perception_accuracy(caption, task.facts) == 1.0, caption
        assert verify(answer, task.answer) == 1.0, (task.question, answer)
        assert format_score(answer) == 1.0
        assert rule_leak(caption, task.answer) == 0, caption


def test_noisy_demos_are_imperfect_but_the_solver_follows_its_caption():
    rng = random.Random(1)
    pairs = [demonstrations(task, rng, DemoNoise(drop=0.3, corrupt=0.3)) for task in TASKS]
    perception = [perception_accuracy(c, t.facts) for t, (c, _) in zip(TASKS, pairs)]
    correct = [verify(a, t.answer) for t, (_, a) in zip(TASKS, pairs)]
    assert 0.2 < sum(perception) / len(TASKS) < 0.9
    # a Solver that reads a perfect caption is right; imperfect captions are what lose accuracy
    assert all(c == 1.0 for p, c in zip(perception, correct) if p == 1.0)
    assert sum(correct) < len(TASKS)


def test_misread_counts_stay_counts_and_polygons_stay_polygons():
    """Shapes share kind names with polygons ("square", "triangle"): a misread count is off by
    1-2, a misread polygon is another polygon's corner count."""
    from prco_mega.data.captions import misread

    rng = random.Random(3)
    square = {"name": "red square", "color": "red", "kind": "square", "value": 1}
    assert {misread("shapes", square, rng) for _ in range(50)} == {0, 2, 3}
    polygon = {"name": "red shape", "color": "red", "kind": "square", "value": 4}
    assert {misread("polygons", polygon, rng) for _ in range(50)} == {3, 5, 6}


PENTAGON_AS_HEXAGON = {"polygons": {5: 6}}
POLYGON_TASKS = [SyntheticTaskSource(SyntheticConfig(image_size=224, seed=5, difficulty=1,
                                                     family_weights={"polygons": 1.0})).task(i)
                 for i in range(200)]


def _stated(noise: DemoNoise, seed: int) -> list[tuple[int, int]]:
    """(true corners, demonstrated corners) of every needed polygon the demonstration keeps."""
    from prco_mega.tiny.demos import perceived_facts

    rng, out = random.Random(seed), []
    for task in POLYGON_TASKS:
        seen = {it["name"]: it["value"] for it in perceived_facts(task.facts, rng, noise)["items"]}
        out += [(it["value"], seen[it["name"]]) for it in task.facts["items"]
                if it["name"] in task.facts["needed"] and it["name"] in seen]
    return out


@pytest.mark.parametrize("true,stated", [(5, 6), (3, 4)])
def test_a_biased_demonstrator_applies_its_misreads_and_nothing_else(true, stated):
    misreads = {"polygons": {true: stated}}
    pairs = _stated(DemoNoise(0.0, 0.0, 1.0, misreads), seed=0)
    assert {s for t, s in pairs if t == true} == {stated}
    assert all(s == t for t, s in pairs if t != true)
    biased = _stated(DemoNoise(0.0, 0.0, 0.6, misreads), seed=1)
    rate = [s == stated for t, s in biased if t == true]
    assert 0.45 < sum(rate) / len(rate) < 0.75, sum(rate) / len(rate)


def test_bias_zero_leaves_the_demonstrations_as_they_were():
    """At bias 0 no random number is drawn: the demonstrations equal a confusion-free one's."""
    a = _stated(DemoNoise(drop=0.05, corrupt=0.05), seed=2)
    b = _stated(DemoNoise(0.05, 0.05, 0.0, PENTAGON_AS_HEXAGON), seed=2)
    assert a == b and any(t != s for t, s in a)


def test_the_biased_solver_demo_follows_the_misread_caption():
    """A hexagon-for-pentagon caption gives the answer its stated corners imply, not the gold."""
    rng = random.Random(4)
    task = next(t for t in POLYGON_TASKS
                if any(it["value"] == 5 and it["name"] in t.facts["needed"]
                       for it in t.facts["items"]))
    caption, answer = demonstrations(task, rng, DemoNoise(0.0, 0.0, 1.0, PENTAGON_AS_HEXAGON))
    assert "pentagon, 5 corners" not in caption and "hexagon, 6 corners" in caption
    assert perception_accuracy(caption, task.facts) < 1.0
    assert verify(answer, task.answer) == 0.0
