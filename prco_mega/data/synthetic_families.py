"""The five synthetic task families: scene sampling, question choice and PIL rendering.

Each `make_<family>(rng, size, difficulty)` returns `(image, question, facts)`; the answer is
derived from `facts["query"]` by `synthetic.answer_from_facts`. Fact schemas (shared keys first):

- every family: `{"family": str, "items": [{"name": str, "value": int, ...}], "needed": [name],
  "query": {"op": str, "args": [name]}}`. `items` is everything readable in the image, `needed`
  the item names the question depends on (what a caption must state), `query` the reasoning step.
- shapes: items `{"name": "red circle", "color", "kind", "value": count}`; plus `"objects":
  [{"color", "kind", "x", "y", "r"}]` (pixel centre and half-size of every drawn shape).
- polygons: items `{"name": "red shape", "color", "kind": "pentagon", "value": corners}`, one
  shape per colour; plus `"objects": [{"color", "kind", "x", "y", "r", "rotation"}]`.
- bars: items `{"name": "kiwi", "label": "kiwi", "value"}` in drawing order; plus `"title"`.
- geometry: `"figure"` in {"triangle", "rectangle", "right_triangle"}, `"vertices"` (letters);
  items `{"name": "angle A", "kind": "angle", "label": "A", "value", "unit": "deg"}` or
  `{"name": "side AB", "kind": "side", "label": "AB", "value", "unit": "cm"}`.
- table: `"title"`, `"rows"`, `"cols"`; items `{"name": "Ana Tue", "row": "Ana", "col": "Tue",
  "value"}` for every cell.

Query ops: `sum` (of args), `diff` (args[0] - args[1]), `range` (max - min of args),
`ratio` (args[0] / args[1]),
`third_angle` (180 - sum), `rect_area` (product), `rect_perimeter` (2 * sum),
`right_triangle_area` (product / 2), `hypotenuse` (sqrt of sum of squares).
"""
from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable

from PIL import Image, ImageDraw, ImageFont

COLORS = {
    "red": (215, 35, 35),
    "blue": (35, 85, 215),
    "green": (30, 150, 50),
    "orange": (245, 140, 0),
    "purple": (140, 55, 175),
}
KINDS = ("circle", "square", "triangle")
BAR_LABELS = ("apple", "fig", "kiwi", "lime", "mango", "peach", "pear", "plum")
TABLE_ROWS = ("Ana", "Ben", "Cara", "Dan", "Eli", "Fay")
TABLE_COLS = ("Mon", "Tue", "Wed", "Thu", "Fri")
VERTEX_LETTERS = "ABCDEFGHKLMNPQRSTUXYZ"
PYTHAGOREAN = ((3, 4, 5), (5, 12, 13), (6, 8, 10), (8, 15, 17), (9, 12, 15), (7, 24, 25))
INK = (20, 20, 20)


@functools.lru_cache(maxsize=32)
def font(px: int) -> ImageFont.FreeTypeFont:
    """Pillow's embedded scalable font (needs Pillow built with FreeType) at `px` pixels."""
    return ImageFont.load_default(size=px)


def text_px(size: int, scale: float = 1.0) -> int:
    """Font height for an image of side `size`: ~1/28 of the side, never below 11 px."""
    return max(11, round(size * scale / 28))


def new_canvas(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    return image, ImageDraw.Draw(image)


def plural(word: str) -> str:
    return word + "s"


# ---------------------------------------------------------------- shapes


def _draw_shape(draw: ImageDraw.ImageDraw, ob: dict) -> None:
    kind, x, y, r, rgb = ob["kind"], ob["x"], ob["y"], ob["r"], COLORS[ob["color"]]
    width = max(1, r // 10)
    if kind == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=rgb, outline=INK, width=width)
    elif kind == "square":
        s = round(r * 0.88)  # equal visual area-ish with the circle
        draw.rectangle((x - s, y - s, x + s, y + s), fill=rgb, outline=INK, width=width)
    else:
        pts = [(x, y - r), (x + r, y + round(r * 0.8)), (x - r, y + round(r * 0.8))]
        draw.polygon(pts, fill=rgb, outline=INK, width=width)


def _shape_groups(rng: random.Random, difficulty: int) -> list[dict]:
    n_groups = rng.randint(*{1: (2, 3), 2: (3, 4)}.get(difficulty, (4, 6)))
    max_count = {1: 4, 2: 6}.get(difficulty, 7)
    combos = [(c, k) for c in COLORS for k in KINDS]
    picked = rng.sample(combos, n_groups)
    return [
        {"name": f"{c} {k}", "color": c, "kind": k, "value": rng.randint(1, max_count)}
        for c, k in picked
    ]


def _place_shapes(rng, items, size: int, difficulty: int) -> list[dict]:
    """One shape per cell of a grid. Difficulty 1 is a 4x4 grid edge to edge with no jitter: at
    any image side divisible by 112 every cell then covers whole 28 px merged vision tokens, so no
    token mixes two shapes (the tiny CPU model learns to count such scenes within its budget).
    Harder levels use a finer grid with a margin and jitter."""
    if difficulty <= 1:
        cells_per_side, margin, jitter_frac = 4, 0.0, 0.0
    else:
        # keep shapes off the border, where crops and resizes would cut them
        cells_per_side, margin, jitter_frac = (6 if difficulty == 2 else 7), size * 0.04, 0.1
    cell = (size - 2 * margin) / cells_per_side
    r = round(cell * 0.32)
    cells = rng.sample(range(cells_per_side**2), sum(it["value"] for it in items))
    objects, cursor = [], 0
    for it in items:
        for _ in range(it["value"]):
            row, col = divmod(cells[cursor], cells_per_side)
            cursor += 1
            jitter = round(cell * jitter_frac)
            x = round(margin + (col + 0.5) * cell) + rng.randint(-jitter, jitter)
            y = round(margin + (row + 0.5) * cell) + rng.randint(-jitter, jitter)
            objects.append({"color": it["color"], "kind": it["kind"], "x": x, "y": y, "r": r})
    return objects


def _shape_question(rng: random.Random, items: list[dict]) -> tuple[str, dict]:
    by_name = {it["name"]: it for it in items}
    ops = ["diff", "sum", "color_total", "kind_total"]
    op = rng.choice(ops)
    unequal = [(a, b) for a in items for b in items if a["value"] > b["value"]]
    if op == "diff" and unequal:
        a, b = rng.choice(unequal)
        q = (f"How many more {a['color']} {plural(a['kind'])} than "
             f"{b['color']} {plural(b['kind'])} are there?")
        return q, {"op": "diff", "args": [a["name"], b["name"]]}
    if op == "color_total":
        color = rng.choice(sorted({it["color"] for it in items}))
        args = [n for n, it in by_name.items() if it["color"] == color]
        return f"How many {color} shapes are there in total?", {"op": "sum", "args": args}
    if op == "kind_total":
        kind = rng.choice(sorted({it["kind"] for it in items}))
        args = [n for n, it in by_name.items() if it["kind"] == kind]
        return f"How many {plural(kind)} of any colour are there?", {"op": "sum", "args": args}
    a, b = rng.sample(items, 2)
    q = (f"How many {a['color']} {plural(a['kind'])} and {b['color']} {plural(b['kind'])} "
         "are there altogether?")
    return q, {"op": "sum", "args": [a["name"], b["name"]]}


def _object_scene(family: str, size: int, items: list[dict], objects: list[dict],
                  draw_one: Callable[[ImageDraw.ImageDraw, dict], None],
                  question: tuple[str, dict]):
    """`(image, question, facts)` of a scene of drawn objects (shapes, polygons)."""
    image, draw = new_canvas(size)
    for ob in objects:
        draw_one(draw, ob)
    text, query = question
    facts = {"family": family, "items": items, "needed": list(query["args"]), "query": query,
             "objects": objects}
    return image, text, facts


def make_shapes(rng: random.Random, size: int, difficulty: int):
    items = _shape_groups(rng, difficulty)
    objects = _place_shapes(rng, items, size, difficulty)
    return _object_scene("shapes", size, items, objects, _draw_shape,
                         _shape_question(rng, items))


# ---------------------------------------------------------------- polygons
# Perception by recognition: each colour appears once, and the question asks for corner counts,
# so reading the image means naming the polygon of a colour (a lookup the tiny CPU model learns
# in its warm-start budget, where counting many small shapes stays near chance).

POLYGONS = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}
POLYGON_OF = {corners: kind for kind, corners in POLYGONS.items()}


def _polygon_items(rng: random.Random, difficulty: int) -> list[dict]:
    """Difficulty 1 draws distinct polygons (its ratio questions need unequal corner counts)."""
    n = rng.randint(*{1: (2, 3), 2: (3, 4)}.get(difficulty, (4, 5)))
    kinds = rng.sample(list(POLYGONS), n) if difficulty <= 1 else rng.choices(list(POLYGONS), k=n)
    return [{"name": f"{c} shape", "color": c, "kind": k, "value": POLYGONS[k]}
            for c, k in zip(rng.sample(list(COLORS), n), kinds)]


def _place_polygons(rng: random.Random, items: list[dict], size: int,
                    difficulty: int) -> list[dict]:
    """One polygon per cell. Difficulty 1: a 2x2 grid, upright, centred (at sides divisible by
    56 every cell covers whole merged vision tokens); harder levels: a 3x3 grid, any rotation,
    jitter."""
    per_side, jitter_frac = (2, 0.0) if difficulty <= 1 else (3, 0.08)
    cell = size / per_side
    r = round(cell * 0.38)
    objects = []
    for it, c in zip(items, rng.sample(range(per_side**2), len(items))):
        row, col = divmod(c, per_side)
        jitter = round(cell * jitter_frac)
        objects.append({"color": it["color"], "kind": it["kind"], "r": r,
                        "x": round((col + 0.5) * cell) + rng.randint(-jitter, jitter),
                        "y": round((row + 0.5) * cell) + rng.randint(-jitter, jitter),
                        "rotation": 0 if difficulty <= 1 else rng.randrange(360)})
    return objects


def _polygon_question(rng: random.Random, items: list[dict],
                      difficulty: int) -> tuple[str, dict]:
    """Difficulty 1 asks how many times as many corners one named polygon has as another (the
    larger first). The ratios of two distinct counts in 3..6 are all different, so a caption that
    misreads either polygon leads the Solver to a wrong answer and loses its reward; under a
    difference, misreads that shift both counts (6 - 5 = 4 - 3) kept it. Naming the larger first
    tells the Observer which of the two polygons goes with which colour, as the difference did:
    the tiny model sees which polygons are there but does not learn which colour each has (a
    question without that cue left 83 of 256 greedy captions with both polygons swapped).
    Harder levels mix sums, differences and totals over all shapes."""
    a, b = rng.sample(items, 2)
    if difficulty <= 1:
        a, b = (a, b) if a["value"] > b["value"] else (b, a)
        q = (f"How many times as many corners does the {a['color']} shape have as the "
             f"{b['color']} shape?")
        return q, {"op": "ratio", "args": [a["name"], b["name"]]}
    op = rng.choice(["sum", "diff", "total"])
    if op == "diff" and a["value"] != b["value"]:
        a, b = (a, b) if a["value"] > b["value"] else (b, a)
        q = f"How many more corners does the {a['color']} shape have than the {b['color']} shape?"
        return q, {"op": "diff", "args": [a["name"], b["name"]]}
    if op == "total":
        return ("How many corners do all the shapes have in total?",
                {"op": "sum", "args": [it["name"] for it in items]})
    q = (f"How many corners do the {a['color']} shape and the {b['color']} shape have "
         "altogether?")
    return q, {"op": "sum", "args": [a["name"], b["name"]]}


def _draw_regular_polygon(draw: ImageDraw.ImageDraw, ob: dict) -> None:
    draw.regular_polygon((ob["x"], ob["y"], ob["r"]), POLYGONS[ob["kind"]],
                         rotation=ob["rotation"], fill=COLORS[ob["color"]], outline=INK,
                         width=max(1, ob["r"] // 20))


def make_polygons(rng: random.Random, size: int, difficulty: int):
    items = _polygon_items(rng, difficulty)
    objects = _place_polygons(rng, items, size, difficulty)
    return _object_scene("polygons", size, items, objects, _draw_regular_polygon,
                         _polygon_question(rng, items, difficulty))


# ---------------------------------------------------------------- bars


def _nice_step(vmax: int) -> int:
    """Tick step giving 4-10 ticks up to vmax: the smallest of 1, 2, 5, 10, 20, 50 that does."""
    for step in (1, 2, 5, 10, 20, 50):
        if vmax / step <= 10:
            return step
    return 100


def _draw_bars(items: list[dict], title: str, size: int) -> Image.Image:
    image, draw = new_canvas(size)
    f, f_small = font(text_px(size)), font(text_px(size, 0.85))
    left, right, top, bottom = size * 0.12, size * 0.97, size * 0.14, size * 0.86
    draw.text((size / 2, size * 0.05), title, font=f, fill=INK, anchor="mm")
    vmax = max(it["value"] for it in items)
    step = _nice_step(vmax)
    axis_top = step * math.ceil(vmax * 1.1 / step)
    y_of = lambda v: bottom - (bottom - top) * v / axis_top  # noqa: E731
    for tick in range(0, axis_top + 1, step):
        y = round(y_of(tick))
        draw.line((left, y, right, y), fill=(225, 225, 225), width=1)
        draw.text((left - 6, y), str(tick), font=f_small, fill=INK, anchor="rm")
    slot = (right - left) / len(items)
    f_label = f  # shrink labels until the longest fits its slot, so neighbours never touch
    while f_label.size > 9 and max(f_label.getlength(it["label"]) for it in items) > slot * 0.92:
        f_label = font(f_label.size - 1)
    for i, it in enumerate(items):
        x0, x1 = left + slot * (i + 0.18), left + slot * (i + 0.82)
        y = round(y_of(it["value"]))
        draw.rectangle((round(x0), y, round(x1), round(bottom)), fill=(70, 130, 200), outline=INK)
        draw.text(((x0 + x1) / 2, y - 4), str(it["value"]), font=f, fill=INK, anchor="md")
        draw.text(((x0 + x1) / 2, bottom + 6), it["label"], font=f_label, fill=INK, anchor="mt")
    draw.line((left, top, left, bottom, right, bottom), fill=INK, width=2)
    return image


def _bar_question(rng: random.Random, items: list[dict], difficulty: int) -> tuple[str, dict]:
    names = [it["name"] for it in items]
    op = rng.choice(["sum", "diff", "range"] + (["total"] if difficulty >= 2 else []))
    unequal = [(a, b) for a in items for b in items if a["value"] > b["value"]]
    if op == "diff" and unequal:
        a, b = rng.choice(unequal)
        q = f"How much greater is the value of the {a['label']} bar than the {b['label']} bar?"
        return q, {"op": "diff", "args": [a["name"], b["name"]]}
    if op == "range":
        q = "What is the difference between the tallest bar and the shortest bar?"
        return q, {"op": "range", "args": names}
    if op == "total":
        return "What is the sum of the values of all the bars?", {"op": "sum", "args": names}
    a, b = rng.sample(items, 2)
    q = f"What is the sum of the values of the {a['label']} bar and the {b['label']} bar?"
    return q, {"op": "sum", "args": [a["name"], b["name"]]}


def make_bars(rng: random.Random, size: int, difficulty: int):
    n = rng.randint(*{1: (3, 4), 2: (4, 6)}.get(difficulty, (5, 8)))
    vmax = {1: 10, 2: 20}.get(difficulty, 50)
    labels = sorted(rng.sample(BAR_LABELS, n), key=BAR_LABELS.index)
    items = [{"name": lab, "label": lab, "value": rng.randint(1, vmax)} for lab in labels]
    title = rng.choice(["Fruit sold (boxes)", "Fruit picked (kg)", "Trees planted"])
    question, query = _bar_question(rng, items, difficulty)
    facts = {"family": "bars", "title": title, "items": items, "needed": list(query["args"]),
             "query": query}
    return _draw_bars(items, title, size), question, facts


# ---------------------------------------------------------------- geometry


def _fit(points: list[tuple[float, float]], size: int, margin: float) -> list[tuple[int, int]]:
    """Scale and translate points (any units, y down) to fill the square canvas minus margins."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    span = max(max(xs) - min(xs), max(ys) - min(ys))
    scale = (size - 2 * margin) / span
    ox = (size - (max(xs) - min(xs)) * scale) / 2 - min(xs) * scale
    oy = (size - (max(ys) - min(ys)) * scale) / 2 - min(ys) * scale
    return [(round(x * scale + ox), round(y * scale + oy)) for x, y in points]


def _outward(p, centre, dist: float) -> tuple[float, float]:
    """Point `dist` px from p, on the ray from the figure's centre through p."""
    dx, dy = p[0] - centre[0], p[1] - centre[1]
    norm = math.hypot(dx, dy) or 1.0
    return p[0] + dx / norm * dist, p[1] + dy / norm * dist


def _label_side(draw, p, q, centre, text: str, size: int) -> None:
    mid = ((p[0] + q[0]) / 2, (p[1] + q[1]) / 2)
    draw.text(_outward(mid, centre, text_px(size) * 1.6), text, font=font(text_px(size)),
              fill=INK, anchor="mm")


def _draw_polygon(pts, letters: str, size: int):
    image, draw = new_canvas(size)
    draw.polygon(pts, outline=INK, width=max(2, size // 150))
    centre = (sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts))
    for p, letter in zip(pts, letters):
        draw.text(_outward(p, centre, text_px(size) * 1.1), letter, font=font(text_px(size, 1.1)),
                  fill=INK, anchor="mm")
    return image, draw, centre


def _unit(p, q) -> tuple[float, float]:
    dx, dy = q[0] - p[0], q[1] - p[1]
    norm = math.hypot(dx, dy) or 1.0
    return dx / norm, dy / norm


def _mark_angle(draw, pts, i: int, degrees: float, text: str, size: int) -> None:
    """An arc inside the angle at vertex i and `text` on its bisector, just beyond the arc.

    The text sits where its box clears both sides: distance ~ text height / sin(angle / 2),
    capped at 40% of the shorter adjacent side so it stays inside the figure."""
    p = pts[i]
    (ux, uy), (vx, vy) = (_unit(p, pts[j]) for j in range(3) if j != i)
    sides = [math.dist(p, pts[j]) for j in range(3) if j != i]
    dist = min(text_px(size) * 2.0 / math.sin(math.radians(degrees) / 2), 0.4 * min(sides))
    radius = min(dist * 0.45, text_px(size) * 1.2)
    a1, a2 = (math.degrees(math.atan2(y, x)) % 360 for x, y in ((ux, uy), (vx, vy)))
    start, end = (a1, a2) if (a2 - a1) % 360 < 180 else (a2, a1)
    box = (p[0] - radius, p[1] - radius, p[0] + radius, p[1] + radius)
    draw.arc(box, start, end, fill=INK, width=max(1, size // 250))
    bx, by = _unit((0, 0), (ux + vx, uy + vy))
    draw.text((p[0] + bx * dist, p[1] + by * dist), text, font=font(text_px(size)), fill=INK,
              anchor="mm")


def _geo_triangle(rng, size, difficulty, letters):
    step = {1: 10, 2: 5}.get(difficulty, 1)
    a = rng.randrange(30, 121, step)
    b = rng.randrange(30, 150 - a + 1, step)
    ca, cb = math.radians(a), math.radians(b)
    ac = math.sin(cb) / math.sin(ca + cb)  # law of sines with AB = 1
    raw = [(0.0, 0.0), (1.0, 0.0), (ac * math.cos(ca), -ac * math.sin(ca))]
    pts = _fit(raw, size, size * 0.16)
    image, draw, _ = _draw_polygon(pts, letters, size)
    for i, (text, degrees) in enumerate([(f"{a}°", a), (f"{b}°", b), ("?", 180 - a - b)]):
        _mark_angle(draw, pts, i, degrees, text, size)
    items = [{"name": f"angle {letters[i]}", "kind": "angle", "label": letters[i], "value": v,
              "unit": "deg"} for i, v in ((0, a), (1, b))]
    q = f"In triangle {letters}, what is the measure of angle {letters[2]} in degrees?"
    return image, q, items, {"op": "third_angle", "args": [it["name"] for it in items]}


def _geo_rectangle(rng, size, difficulty, letters):
    hi = {1: 12, 2: 20}.get(difficulty, 40)
    w, h = rng.randint(2, hi), rng.randint(2, hi)
    ratio = min(2.0, max(0.5, w / h))  # keep drawn proportions readable
    pts = _fit([(0, 0), (ratio, 0), (ratio, 1), (0, 1)], size, size * 0.18)
    image, draw, centre = _draw_polygon(pts, letters, size)
    _label_side(draw, pts[2], pts[3], centre, f"{w} cm", size)
    _label_side(draw, pts[1], pts[2], centre, f"{h} cm", size)
    sides = [letters[2] + letters[3], letters[1] + letters[2]]
    items = [{"name": f"side {s}", "kind": "side", "label": s, "value": v, "unit": "cm"}
             for s, v in zip(sides, (w, h))]
    if rng.random() < 0.5:
        q = f"What is the area of rectangle {letters} in square centimetres?"
        op = "rect_area"
    else:
        q, op = f"What is the perimeter of rectangle {letters} in centimetres?", "rect_perimeter"
    return image, q, items, {"op": op, "args": [it["name"] for it in items]}


def _geo_right_triangle(rng, size, difficulty, letters):
    hyp = rng.random() < 0.5
    if hyp:
        a, b, _ = rng.choice(PYTHAGOREAN[: 3 if difficulty == 1 else None])
        a, b = (a, b) if rng.random() < 0.5 else (b, a)
    else:
        hi = {1: 10, 2: 16}.get(difficulty, 30)
        a, b = rng.randint(2, hi), rng.randint(2, hi)
    ratio = min(2.0, max(0.5, a / b))  # a: horizontal leg CB, b: vertical leg CA
    pts = _fit([(0, 0), (ratio, 1), (0, 1)], size, size * 0.18)  # A top, B right, C corner
    image, draw, centre = _draw_polygon(pts, letters, size)
    m = max(8, size // 28)
    cx, cy = pts[2]
    draw.line((cx + m, cy, cx + m, cy - m, cx, cy - m), fill=INK, width=max(1, size // 250))
    _label_side(draw, pts[2], pts[1], centre, f"{a} cm", size)
    _label_side(draw, pts[2], pts[0], centre, f"{b} cm", size)
    sides = [letters[2] + letters[1], letters[2] + letters[0]]
    items = [{"name": f"side {s}", "kind": "side", "label": s, "value": v, "unit": "cm"}
             for s, v in zip(sides, (a, b))]
    args = [it["name"] for it in items]
    if hyp:
        q = (f"Triangle {letters} has a right angle at {letters[2]}. "
             f"What is the length of side {letters[0]}{letters[1]} in centimetres?")
        return image, q, items, {"op": "hypotenuse", "args": args}
    q = (f"Triangle {letters} has a right angle at {letters[2]}. "
         "What is its area in square centimetres?")
    return image, q, items, {"op": "right_triangle_area", "args": args}


def make_geometry(rng: random.Random, size: int, difficulty: int):
    figure = rng.choice(["triangle", "rectangle", "right_triangle"])
    n_vertices = 4 if figure == "rectangle" else 3
    if difficulty == 1:
        letters = "ABCD"[:n_vertices]
    else:
        letters = "".join(rng.sample(VERTEX_LETTERS, n_vertices))
    maker = {"triangle": _geo_triangle, "rectangle": _geo_rectangle,
             "right_triangle": _geo_right_triangle}[figure]
    image, question, items, query = maker(rng, size, difficulty, letters)
    facts = {"family": "geometry", "figure": figure, "vertices": letters, "items": items,
             "needed": list(query["args"]), "query": query}
    return image, question, facts


# ---------------------------------------------------------------- table


def _draw_table(title: str, rows, cols, values: dict, size: int) -> Image.Image:
    image, draw = new_canvas(size)
    f = font(text_px(size, 1.1))
    n_r, n_c = len(rows) + 1, len(cols) + 1
    cell_w = min(size * 0.9 / n_c, size * 0.22)
    cell_h = min(size * 0.75 / n_r, text_px(size) * 3.2)
    x0, y0 = (size - cell_w * n_c) / 2, (size - cell_h * n_r) / 2 + size * 0.04
    draw.text((size / 2, y0 - cell_h * 0.6), title, font=f, fill=INK, anchor="mm")
    draw.rectangle((x0, y0, x0 + cell_w * n_c, y0 + cell_h), fill=(225, 232, 245))
    draw.rectangle((x0, y0, x0 + cell_w, y0 + cell_h * n_r), fill=(225, 232, 245))
    for i in range(n_r + 1):
        draw.line((x0, y0 + i * cell_h, x0 + n_c * cell_w, y0 + i * cell_h), fill=INK, width=1)
    for j in range(n_c + 1):
        draw.line((x0 + j * cell_w, y0, x0 + j * cell_w, y0 + n_r * cell_h), fill=INK, width=1)
    centre = lambda i, j: (x0 + (j + 0.5) * cell_w, y0 + (i + 0.5) * cell_h)  # noqa: E731
    for j, c in enumerate(cols, start=1):
        draw.text(centre(0, j), c, font=f, fill=INK, anchor="mm")
    for i, r in enumerate(rows, start=1):
        draw.text(centre(i, 0), r, font=f, fill=INK, anchor="mm")
        for j, c in enumerate(cols, start=1):
            draw.text(centre(i, j), str(values[r, c]), font=f, fill=INK, anchor="mm")
    return image


def _table_question(rng, rows, cols, values, difficulty) -> tuple[str, dict]:
    name = lambda r, c: f"{r} {c}"  # noqa: E731
    op = rng.choice(["sum2", "diff", "row_total"] + (["col_total"] if difficulty >= 2 else []))
    r, c = rng.choice(rows), rng.choice(cols)
    unequal = [(c1, c2) for c1 in cols for c2 in cols if values[r, c1] > values[r, c2]]
    if op == "diff" and unequal:
        c1, c2 = rng.choice(unequal)
        q = f"How many more books did {r} read on {c1} than on {c2}?"
        return q, {"op": "diff", "args": [name(r, c1), name(r, c2)]}
    if op == "row_total":
        q = f"How many books did {r} read in total on the days shown?"
        return q, {"op": "sum", "args": [name(r, cc) for cc in cols]}
    if op == "col_total":
        q = f"How many books were read on {c} in total by everyone in the table?"
        return q, {"op": "sum", "args": [name(rr, c) for rr in rows]}
    r1, r2 = rng.sample(rows, 2)
    q = f"How many books did {r1} and {r2} read on {c} together?"
    return q, {"op": "sum", "args": [name(r1, c), name(r2, c)]}


def make_table(rng: random.Random, size: int, difficulty: int):
    n_rows, n_cols = {1: ((2, 3), (3, 3)), 2: ((3, 4), (3, 4))}.get(difficulty, ((4, 5), (4, 5)))
    rows = sorted(rng.sample(TABLE_ROWS, rng.randint(*n_rows)), key=TABLE_ROWS.index)
    cols = list(TABLE_COLS[: rng.randint(*n_cols)])
    vmax = {1: 9, 2: 20}.get(difficulty, 50)
    values = {(r, c): rng.randint(1, vmax) for r in rows for c in cols}
    items = [{"name": f"{r} {c}", "row": r, "col": c, "value": values[r, c]}
             for r in rows for c in cols]
    question, query = _table_question(rng, rows, cols, values, difficulty)
    title = "Books read"
    facts = {"family": "table", "title": title, "rows": rows, "cols": cols, "items": items,
             "needed": list(query["args"]), "query": query}
    return _draw_table(title, rows, cols, values, size), question, facts


FAMILIES = {"shapes": make_shapes, "polygons": make_polygons, "bars": make_bars,
            "geometry": make_geometry, "table": make_table}
