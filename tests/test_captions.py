"""The perception scorer: perfect captions score 1, each dropped or corrupted needed fact costs
exactly its share, and free text written the way people write is read correctly."""
import random
from fractions import Fraction

import pytest

from prco_mega.data.captions import (caption_answer, misread_keeps_answer, perception_accuracy,
                                   render_caption)
from prco_mega.data.synthetic import SyntheticConfig, SyntheticTaskSource

FAMILIES = ("shapes", "polygons", "bars", "geometry", "table")


def tasks_of(family: str, n: int = 25):
    weights = {f: float(f == family) for f in FAMILIES}
    tasks = []
    for difficulty in (1, 2, 3):
        cfg = SyntheticConfig(image_size=224, difficulty=difficulty, family_weights=weights, seed=4)
        tasks += SyntheticTaskSource(cfg).batch(0, n // 3 + 1)
    return tasks


@pytest.mark.parametrize("family", FAMILIES)
def test_rendered_caption_scores_one(family):
    for task in tasks_of(family):
        assert perception_accuracy(render_caption(task.facts), task.facts) == 1.0, task.uid
        focused = render_caption(task.facts, task.question)
        assert perception_accuracy(focused, task.facts) == 1.0, (task.uid, focused)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("perturbation", ["drop", "corrupt"])
def test_each_perturbed_needed_fact_costs_its_share(family, perturbation):
    """A question-focused caption lists exactly the n needed facts; perturbing k of them must
    score (n - k) / n."""
    rng = random.Random(0)
    for task in tasks_of(family):
        n = len(task.facts["needed"])
        for k in {1, n}:
            caption = render_caption(task.facts, task.question, rng=rng, **{perturbation: k / n})
            assert perception_accuracy(caption, task.facts) == pytest.approx((n - k) / n), caption


def test_caption_lists_facts_as_bullets_without_the_question():
    task = tasks_of("bars", 3)[0]
    caption = render_caption(task.facts, task.question)
    lines = caption.splitlines()
    assert all(line.startswith("- ") for line in lines)
    assert len(lines) == 1 + len(task.facts["needed"])  # a scene line, then one per needed fact
    assert task.question not in caption


def test_drop_fraction_out_of_range_is_an_error():
    task = tasks_of("shapes", 3)[0]
    with pytest.raises(ValueError, match="drop"):
        render_caption(task.facts, drop=1.5)


SHAPES = {"family": "shapes", "needed": ["red circle", "blue square"], "items": [
    {"name": "red circle", "color": "red", "kind": "circle", "value": 3},
    {"name": "blue square", "color": "blue", "kind": "square", "value": 2},
    {"name": "green triangle", "color": "green", "kind": "triangle", "value": 1}]}
BARS = {"family": "bars", "needed": ["kiwi", "plum"], "items": [
    {"name": "kiwi", "label": "kiwi", "value": 7}, {"name": "plum", "label": "plum", "value": 12}]}
GEOMETRY = {"family": "geometry", "needed": ["angle A", "side AB"], "items": [
    {"name": "angle A", "kind": "angle", "label": "A", "value": 50, "unit": "deg"},
    {"name": "side AB", "kind": "side", "label": "AB", "value": 5, "unit": "cm"}]}
TABLE = {"family": "table", "needed": ["Ana Tue", "Ben Wed"], "items": [
    {"name": "Ana Tue", "row": "Ana", "col": "Tue", "value": 5},
    {"name": "Ana Wed", "row": "Ana", "col": "Wed", "value": 8},
    {"name": "Ben Tue", "row": "Ben", "col": "Tue", "value": 4},
    {"name": "Ben Wed", "row": "Ben", "col": "Wed", "value": 3}]}


@pytest.mark.parametrize("facts,caption,score", [
    (SHAPES, "I can see three red circles, 2 blue squares and a green triangle.", 1.0),
    (SHAPES, "red circles: 3, blue squares: 2", 1.0),
    (SHAPES, "There are 2 red circles and 3 blue squares.", 0.0),
    (SHAPES, "- red circles: 3\n- one green triangle", 0.5),
    (SHAPES, "- red circles: 3\n- blue squares: 2\n- red circles: 4", 0.5),  # contradicts itself
    (SHAPES, "- red squares: 3\n- blue circles: 2", 0.0),  # right numbers, wrong objects
    (BARS, "The Kiwi bar reaches 7 while the plum bar is at 12.", 1.0),
    (BARS, "* kiwi = 7\n* plum = 21", 0.5),
    (GEOMETRY, "∠A = 50°, and side BA measures 5 cm.", 1.0),
    (GEOMETRY, "The angle at A is 50 degrees. AB = 5 cm", 1.0),
    (GEOMETRY, "Triangle ABC: the angle B is 50 degrees; AC = 5", 0.0),
    (TABLE, "Ana read 5 books on Tuesday; on Wed Ben read 3.", 1.0),
    (TABLE, "- Tue: Ana 5, Ben 4\n- Wed: Ana 8, Ben 3", 1.0),
    (TABLE, "- Ana: Tue 5, Wed 8\n- Ben: Tue 3, Wed 4", 0.5),
    (TABLE, "Ana has 5 and Ben has 3.", 0.0),  # no days: the cells are not identified
])
def test_free_text_captions(facts, caption, score):
    assert perception_accuracy(caption, facts) == score


# ---- the answer a caption leads to: which misreads the Observer's utility reward can see


def _two_polygons(op: str) -> dict:
    items = [{"name": "red shape", "color": "red", "kind": "hexagon", "value": 6},
             {"name": "blue shape", "color": "blue", "kind": "pentagon", "value": 5},
             {"name": "green shape", "color": "green", "kind": "square", "value": 4}]
    return {"family": "polygons", "items": items, "needed": ["red shape", "blue shape"],
            "query": {"op": op, "args": ["red shape", "blue shape"]}}


def _caption(red: int, blue: int | None) -> str:
    lines = [f"- red shape: {red} corners"] + ([f"- blue shape: {blue} corners"] if blue else [])
    return "\n".join(lines)


@pytest.mark.parametrize("op,gold", [("diff", 1), ("ratio", Fraction(6, 5)), ("sum", 11)])
def test_a_true_caption_leads_to_the_gold_answer_and_hides_no_misread(op, gold):
    facts = _two_polygons(op)
    assert caption_answer(_caption(6, 5), facts) == gold
    assert not misread_keeps_answer(_caption(6, 5), facts)


def test_which_misreads_each_question_hides():
    shifted = _caption(5, 4)  # both misread one corner down: 5 - 4 = 6 - 5
    assert perception_accuracy(shifted, _two_polygons("diff")) == 0.0
    assert misread_keeps_answer(shifted, _two_polygons("diff"))
    swapped = _caption(5, 6)  # which colour has which polygon: 5 + 6 = 6 + 5
    assert misread_keeps_answer(swapped, _two_polygons("sum"))
    assert caption_answer(swapped, _two_polygons("diff")) == -1
    ratio = _two_polygons("ratio")  # a / b tells every ordered pair of distinct counts apart
    assert caption_answer(shifted, ratio) == Fraction(5, 4)
    assert caption_answer(swapped, ratio) == Fraction(5, 6)
    assert not misread_keeps_answer(shifted, ratio)
    assert not misread_keeps_answer(swapped, ratio)


def test_a_caption_missing_a_needed_fact_leads_to_no_answer():
    facts = _two_polygons("sum")
    assert caption_answer(_caption(6, None), facts) is None
    assert not misread_keeps_answer(_caption(6, None), facts)
    two_values = "- red shape: 6 corners\n- blue shape: 5 corners\n- red shape: 5 corners"
    assert caption_answer(two_values, facts) is None


@pytest.mark.parametrize("garbled", ["1.2/6", "5/0"])
def test_model_text_that_only_looks_like_a_number_is_not_a_value(garbled):
    """A sampled caption once read "1.2/6 corners" and stopped a run at step 91: the scorer must
    read anything the policy writes."""
    facts = _two_polygons("ratio")
    caption = f"- red shape: {garbled} corners\n- blue shape: 5 corners"
    assert perception_accuracy(caption, facts) == 0.5
    assert caption_answer(caption, facts) is None
    assert not misread_keeps_answer(caption, facts)


def test_needed_readings_give_the_stated_value_of_each_needed_fact():
    from prco_mega.data.captions import needed_readings, value_label

    facts = {"family": "polygons", "needed": ["red shape", "blue shape"],
             "items": [{"name": "red shape", "color": "red", "kind": "hexagon", "value": 6},
                       {"name": "blue shape", "color": "blue", "kind": "pentagon", "value": 5},
                       {"name": "green shape", "color": "green", "kind": "square", "value": 4}]}
    caption = "- red shape: pentagon, 5 corners\n- green shape: square, 4 corners"
    assert needed_readings(caption, facts) == [("6", "5"), ("5", None)]
    two = "- red shape: hexagon, 6 corners\n- red shape: square, 4 corners\n- blue shape: 5 corners"
    assert needed_readings(two, facts) == [("6", None), ("5", "5")]
    assert value_label("polygons", "5") == "5 (pentagon)" and value_label("bars", "5") == "5"
