"""The synthetic task: answers follow from the question and the scene, pixels show the scene,
everything is a pure function of (seed, index), and the knobs are validated."""
import io
import itertools
import math
import re
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from prco_mega.data.synthetic import SyntheticConfig, SyntheticTaskSource
from prco_mega.data.synthetic_families import COLORS

FAMILIES = ("shapes", "polygons", "bars", "geometry", "table")


def only(family: str, **kw) -> SyntheticConfig:
    return SyntheticConfig(family_weights={f: float(f == family) for f in FAMILIES}, **kw)


# ---- independent re-derivation: parse the QUESTION TEXT, look values up in the scene facts


def _shape_count(facts, color=None, kind=None) -> int:
    """Counted from the drawn objects list, not from the per-group items."""
    return sum(1 for ob in facts["objects"]
               if (color is None or ob["color"] == color) and (kind is None or ob["kind"] == kind))


def expected_shapes(q: str, facts) -> int:
    if m := re.fullmatch(r"How many more (\w+) (\w+)s than (\w+) (\w+)s are there\?", q):
        return _shape_count(facts, m[1], m[2]) - _shape_count(facts, m[3], m[4])
    if m := re.fullmatch(r"How many (\w+) (\w+)s and (\w+) (\w+)s are there altogether\?", q):
        return _shape_count(facts, m[1], m[2]) + _shape_count(facts, m[3], m[4])
    if m := re.fullmatch(r"How many (\w+) shapes are there in total\?", q):
        return _shape_count(facts, color=m[1])
    m = re.fullmatch(r"How many (\w+)s of any colour are there\?", q)
    return _shape_count(facts, kind=m[1])


CORNERS = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}  # written out, not imported


def expected_polygons(q: str, facts) -> int:
    """Corners from the drawn objects' kinds (not the items' values)."""
    corners = {ob["color"]: CORNERS[ob["kind"]] for ob in facts["objects"]}
    if m := re.fullmatch(r"How many more corners does the (\w+) shape have than the (\w+) shape\?", q):
        return corners[m[1]] - corners[m[2]]
    if m := re.fullmatch(r"How many corners do the (\w+) shape and the (\w+) shape have altogether\?",
                         q):
        return corners[m[1]] + corners[m[2]]
    if m := re.fullmatch(r"How many times as many corners does the (\w+) shape have as the (\w+) "
                         r"shape\?", q):
        return Fraction(corners[m[1]], corners[m[2]])
    assert q == "How many corners do all the shapes have in total?", q
    return sum(corners.values())


def expected_bars(q: str, facts) -> int:
    v = {it["label"]: it["value"] for it in facts["items"]}
    if m := re.fullmatch(r"What is the sum of the values of the (\w+) bar and the (\w+) bar\?", q):
        return v[m[1]] + v[m[2]]
    if m := re.fullmatch(r"How much greater is the value of the (\w+) bar than the (\w+) bar\?", q):
        return v[m[1]] - v[m[2]]
    if q == "What is the difference between the tallest bar and the shortest bar?":
        return max(v.values()) - min(v.values())
    assert q == "What is the sum of the values of all the bars?", q
    return sum(v.values())


def expected_geometry(q: str, facts) -> Fraction:
    angles = {it["label"]: it["value"] for it in facts["items"] if it["kind"] == "angle"}
    sides = {it["label"]: it["value"] for it in facts["items"] if it["kind"] == "side"}
    if m := re.fullmatch(r"In triangle (\w{3}), what is the measure of angle (\w) in degrees\?", q):
        assert set(angles) == set(m[1]) - {m[2]}  # the two other angles are the labelled ones
        return Fraction(180 - sum(angles.values()))
    a, b = sides.values()
    if re.fullmatch(r"What is the area of rectangle \w{4} in square centimetres\?", q):
        return Fraction(a * b)
    if re.fullmatch(r"What is the perimeter of rectangle \w{4} in centimetres\?", q):
        return Fraction(2 * a + 2 * b)
    m = re.fullmatch(r"Triangle (\w)(\w)(\w) has a right angle at (\w)\. (.*)", q)
    assert m[4] == m[3] and set(sides) == {m[3] + m[2], m[3] + m[1]}  # legs meet at the corner
    if m[5] == "What is its area in square centimetres?":
        return Fraction(a * b, 2)
    assert m[5] == f"What is the length of side {m[1]}{m[2]} in centimetres?", q
    return Fraction(math.sqrt(a * a + b * b))


def expected_table(q: str, facts) -> int:
    v = {(it["row"], it["col"]): it["value"] for it in facts["items"]}
    if m := re.fullmatch(r"How many more books did (\w+) read on (\w+) than on (\w+)\?", q):
        return v[m[1], m[2]] - v[m[1], m[3]]
    if m := re.fullmatch(r"How many books did (\w+) read in total on the days shown\?", q):
        return sum(val for (r, _), val in v.items() if r == m[1])
    if m := re.fullmatch(r"How many books were read on (\w+) in total by everyone in the table\?",
                         q):
        return sum(val for (_, c), val in v.items() if c == m[1])
    m = re.fullmatch(r"How many books did (\w+) and (\w+) read on (\w+) together\?", q)
    return v[m[1], m[3]] + v[m[2], m[3]]


EXPECTED = {"shapes": expected_shapes, "polygons": expected_polygons, "bars": expected_bars, "geometry": expected_geometry,
            "table": expected_table}


def parse_answer(text: str) -> Fraction:
    assert re.fullmatch(r"-?\d+(\.\d+)?|\d+/\d+", text), f"answer {text!r} is not a number"
    return Fraction(text)


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_answers_follow_from_question_and_scene(difficulty):
    source = SyntheticTaskSource(SyntheticConfig(image_size=224, difficulty=difficulty, seed=11))
    families = Counter()
    for task in source.batch(0, 110):
        families[task.family] += 1
        expected = EXPECTED[task.family](task.question, task.facts)
        assert parse_answer(task.answer) == expected, (task.uid, task.question, task.facts)
        assert parse_answer(task.answer) >= 0, task.uid
        assert set(task.facts["needed"]) <= {it["name"] for it in task.facts["items"]}
    assert set(families) == set(FAMILIES)


def test_shape_groups_match_drawn_objects_and_pixels():
    for task in SyntheticTaskSource(only("shapes", difficulty=3, seed=3)).batch(0, 12):
        pixels = np.asarray(task.images[0])
        for it in task.facts["items"]:
            assert it["value"] == _shape_count(task.facts, it["color"], it["kind"])
        for ob in task.facts["objects"]:  # every listed object is painted where it is said to be
            assert tuple(pixels[ob["y"], ob["x"]]) == COLORS[ob["color"]], (task.uid, ob)
        r = task.facts["objects"][0]["r"]
        area = fill_areas(r)
        for color, rgb in COLORS.items():  # and nothing else of that colour is painted
            painted = np.all(pixels == rgb, axis=-1).sum()
            expected = sum(area[ob["kind"]] for ob in task.facts["objects"] if ob["color"] == color)
            assert abs(painted - expected) <= 0.08 * expected, (task.uid, color)


@pytest.mark.parametrize("size", [224, 448])
def test_easy_shapes_sit_one_per_cell_of_a_grid_aligned_with_merged_vision_tokens(size):
    """Difficulty 1: a 4x4 grid edge to edge, shapes centred in their cells, so every 28 px
    merged token lies inside one cell and never shows parts of two shapes."""
    cell = size // 4
    source = SyntheticTaskSource(only("shapes", difficulty=1, seed=5, image_size=size))
    for task in source.batch(0, 20):
        objects = task.facts["objects"]
        cells = {(ob["x"] // cell, ob["y"] // cell) for ob in objects}
        assert len(cells) == len(objects), task.uid  # one shape per cell
        for ob in objects:
            assert (ob["x"] % cell, ob["y"] % cell) == (cell // 2, cell // 2), (task.uid, ob)
            assert ob["r"] < cell // 2  # the shape stays inside its cell


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_polygons_are_one_per_colour_and_painted_where_listed(difficulty):
    for task in SyntheticTaskSource(only("polygons", difficulty=difficulty, seed=6)).batch(0, 12):
        pixels = np.asarray(task.images[0])
        colors = [ob["color"] for ob in task.facts["objects"]]
        assert len(set(colors)) == len(colors) == len(task.facts["items"]), task.uid
        for ob in task.facts["objects"]:
            assert tuple(pixels[ob["y"], ob["x"]]) == COLORS[ob["color"]], (task.uid, ob)
        for color, rgb in COLORS.items():  # colours not listed are not painted
            painted = np.all(pixels == rgb, axis=-1).sum()
            assert (painted > 0) == (color in colors), (task.uid, color)


@pytest.mark.parametrize("size", [224, 448])
def test_easy_polygons_sit_upright_in_a_2x2_grid_of_whole_merged_tokens(size):
    """Difficulty 1: each polygon centred in a quadrant (4x4 merged 28 px tokens at 224 px)."""
    half = size // 2
    for task in SyntheticTaskSource(only("polygons", difficulty=1, seed=5,
                                         image_size=size)).batch(0, 20):
        objects = task.facts["objects"]
        assert len({(ob["x"] // half, ob["y"] // half) for ob in objects}) == len(objects)
        for ob in objects:
            assert (ob["x"] % half, ob["y"] % half, ob["rotation"]) == (half // 2, half // 2, 0)
            assert ob["r"] < half // 2


def test_easy_polygon_answers_name_the_two_polygons():
    """Difficulty 1 draws distinct polygons and asks the larger's corners over the smaller's; no
    two pairs share that ratio, so a caption that misreads either named polygon changes the
    answer it leads to."""
    by_ratio = {}
    for x, y in itertools.combinations(sorted(CORNERS.values(), reverse=True), 2):
        assert by_ratio.setdefault(Fraction(x, y), (x, y)) == (x, y), (x, y, by_ratio[x / y])
    for task in SyntheticTaskSource(only("polygons", difficulty=1, seed=2)).batch(0, 60):
        query, value = task.facts["query"], {it["name"]: it["value"] for it in task.facts["items"]}
        assert len(set(value.values())) == len(value), task.facts["items"]
        assert query["op"] == "ratio", task.question
        assert by_ratio[Fraction(task.answer)] == tuple(value[n] for n in query["args"])


def test_polygon_pixels_distinguish_kinds():
    """Fill areas follow the regular polygon's area (n/2) r^2 sin(2 pi / n), inset by the
    `r // 20` outline (inradius r cos(pi / n)): the kinds differ in the image, not only in the
    facts."""
    for task in SyntheticTaskSource(only("polygons", difficulty=1, seed=8)).batch(0, 12):
        pixels = np.asarray(task.images[0])
        for ob in task.facts["objects"]:
            n = CORNERS[ob["kind"]]
            inset = 1 - (max(1, ob["r"] // 20) - 0.5) / (ob["r"] * math.cos(math.pi / n))
            area = n / 2 * ob["r"] ** 2 * math.sin(2 * math.pi / n) * inset**2
            painted = np.all(pixels == COLORS[ob["color"]], axis=-1).sum()
            assert abs(painted - area) <= 0.04 * area, (task.uid, ob, painted, area)


def fill_areas(r: int) -> dict[str, float]:
    """Fill area inside a `w = r // 10` outline, with half a pixel back for rasterisation:
    circle of radius r; square of half-side 0.88 r; triangle of base 2r and height 1.8r
    (inradius 0.588 r, so an inset of d scales its area by (1 - d / 0.588 r)^2)."""
    w, s = max(1, r // 10), round(0.88 * r)
    return {"circle": math.pi * (r - w + 0.5) ** 2, "square": (2 * (s - w) + 1) ** 2,
            "triangle": 1.8 * r * r * (1 - (w - 0.5) / (0.588 * r)) ** 2}


def test_bars_are_drawn_to_scale():
    for task in SyntheticTaskSource(only("bars", difficulty=2, seed=5)).batch(0, 8):
        pixels = np.asarray(task.images[0]).astype(int)
        bar = np.all(pixels == (70, 130, 200), axis=-1)  # bar fill colour
        row = bar[int(task.images[0].height * 0.85)]  # just above the x axis
        starts = np.flatnonzero(row[1:] & ~row[:-1]) + 1
        ends = np.flatnonzero(row[:-1] & ~row[1:]) + 1
        heights = [bar[:, (s + e) // 2].sum() for s, e in zip(starts, ends)]
        values = [it["value"] for it in task.facts["items"]]
        assert len(heights) == len(values), task.uid
        per_unit = heights[values.index(max(values))] / max(values)
        for h, v in zip(heights, values):
            assert abs(h - v * per_unit) <= 2.5, (task.uid, heights, values)


def png_bytes(task) -> bytes:
    buf = io.BytesIO()
    task.images[0].save(buf, format="PNG")
    return buf.getvalue()


def test_same_seed_same_tasks_and_pixels():
    cfg = SyntheticConfig(image_size=224, difficulty=2, seed=42)
    a, b = SyntheticTaskSource(cfg).batch(0, 12), SyntheticTaskSource(cfg).batch(0, 12)
    for x, y in zip(a, b):
        assert (x.uid, x.question, x.answer, x.facts) == (y.uid, y.question, y.answer, y.facts)
        assert x.images[0].tobytes() == y.images[0].tobytes()
        assert png_bytes(x) == png_bytes(y)
    # random access: task(i) does not depend on what was generated before
    assert SyntheticTaskSource(cfg).task(7).facts == a[7].facts


def test_different_seed_different_tasks():
    a = SyntheticTaskSource(SyntheticConfig(image_size=224, seed=1)).batch(0, 10)
    b = SyntheticTaskSource(SyntheticConfig(image_size=224, seed=2)).batch(0, 10)
    differing = sum(x.images[0].tobytes() != y.images[0].tobytes() for x, y in zip(a, b))
    assert differing >= 8


@pytest.mark.parametrize("size", [225, 300, 196, 0])
def test_image_size_must_be_a_multiple_of_28(size):
    with pytest.raises(ValueError, match=str(size)):
        SyntheticConfig(image_size=size)


@pytest.mark.parametrize("size", [224, 336, 672])
def test_images_have_the_configured_size(size):
    for task in SyntheticTaskSource(SyntheticConfig(image_size=size)).batch(0, 4):
        assert task.images[0].size == (size, size) and task.images[0].mode == "RGB"


def test_bad_knobs_are_named():
    with pytest.raises(ValueError, match="difficulty"):
        SyntheticConfig(difficulty=4)
    with pytest.raises(ValueError, match="charts"):
        SyntheticConfig(family_weights={"charts": 1.0})
    with pytest.raises(ValueError, match="family_weights"):
        SyntheticConfig(family_weights={"bars": 0.0})


def test_family_mix_follows_weights():
    cfg = SyntheticConfig(image_size=224, family_weights={"shapes": 3.0, "table": 1.0,
                                                           "bars": 0.0, "geometry": 0.0})
    source = SyntheticTaskSource(cfg)
    rng_draws = Counter(source.task(i).family for i in range(200))
    assert set(rng_draws) == {"shapes", "table"}
    assert 0.65 <= rng_draws["shapes"] / 200 <= 0.85


def test_difficulty_adds_objects():
    def mean_items(difficulty):
        tasks = SyntheticTaskSource(SyntheticConfig(image_size=224, difficulty=difficulty,
                                                    seed=9)).batch(0, 40)
        return np.mean([len(t.facts["items"]) for t in tasks])

    assert mean_items(1) < mean_items(2) < mean_items(3)


def test_preview_writes_pngs_and_a_jsonl_row_per_task(tmp_path):
    import json

    from PIL import Image

    from prco_mega.data.preview import write_preview

    cfg = SyntheticConfig(image_size=224, seed=3)
    paths = write_preview(tmp_path / "preview", 5, cfg)
    assert [p.name for p in paths] == [f"task_{i:04d}.png" for i in range(5)] + ["tasks.jsonl"]
    rows = [json.loads(line) for line in paths[-1].read_text().splitlines()]
    for row, task in zip(rows, SyntheticTaskSource(cfg).batch(0, 5), strict=True):
        assert (row["uid"], row["question"], row["answer"]) == (task.uid, task.question,
                                                                 task.answer)
        assert row["facts"] == json.loads(json.dumps(task.facts))
        with Image.open(tmp_path / "preview" / row["image"]) as png:
            assert png.tobytes() == task.images[0].tobytes()
