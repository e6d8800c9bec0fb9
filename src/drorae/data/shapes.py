"""A synthetic compositional image-caption set in GenEval's six categories (``drorae data shapes``), and its scorer.

Images: flat coloured circles, squares and triangles on white, one to four of them, never touching. Every image has
a template caption and GenEval-format metadata (``include`` / ``exclude`` clauses) that its own content satisfies:

    single_object  "a photo of a circle"                       two_object  "a photo of a circle and a square"
    counting       "a photo of three triangles"                colors      "a photo of a red square"
    position       "a photo of a circle left of a square"      color_attr  "a photo of a red circle and a blue square"

Its scorer is :mod:`drorae.evaluation.shapes`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHAPES = ["circle", "square", "triangle"]
PALETTE = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (235, 200, 20)}
WHITE = (255, 255, 255)
NUMBERS = {2: "two", 3: "three", 4: "four"}
TAGS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
RELATIONS = ["left of", "right of", "above", "below"]


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    cx: float
    cy: float
    r: float  # half the side of the object's box


def draw(objects: list[ShapeObject], size: int) -> np.ndarray:
    """uint8 [size, size, 3]: the objects on white (exact masks, no antialiasing)."""
    img = np.full((size, size, 3), 255, dtype=np.uint8)
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    for o in objects:
        dx, dy = xs - o.cx, ys - o.cy
        if o.shape == "circle":
            inside = dx**2 + dy**2 <= o.r**2
        elif o.shape == "square":
            inside = (np.abs(dx) <= o.r) & (np.abs(dy) <= o.r)
        else:  # an upward isosceles triangle filling its box: apex at the top centre
            t = (dy + o.r) / (2 * o.r)  # 0 at the apex row, 1 at the base
            inside = (t >= 0) & (t <= 1) & (np.abs(dx) <= t * o.r)
        img[inside] = PALETTE[o.color]
    return img


def _place(rng, n: int, size: int, constraint=None, tries: int = 200) -> list[tuple[float, float, float]] | None:
    """``n`` non-touching boxes (cx, cy, r) inside the image; ``constraint(boxes)`` must hold."""
    for _ in range(tries):
        boxes = []
        for _ in range(n):
            r = rng.uniform(size * 0.11, size * 0.16)
            boxes.append((rng.uniform(r + 1, size - r - 1), rng.uniform(r + 1, size - r - 1), r))
        apart = all(
            max(abs(a[0] - b[0]), abs(a[1] - b[1])) > a[2] + b[2] + 2
            for i, a in enumerate(boxes)
            for b in boxes[i + 1 :]
        )
        if apart and (constraint is None or constraint(boxes)):
            return boxes
    return None


def _relation_holds(rel: str, a, b, size: int) -> bool:
    """A clear relation of box a to box b (well beyond GenEval's 0.1 x size margin, one axis dominant)."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    along, across = {"left of": (-dx, dy), "right of": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[rel]
    return along > (a[2] + b[2]) + 2 and abs(across) < 0.5 * along


def make_example(rng, tag: str, size: int) -> tuple[list[ShapeObject], str, dict]:
    """One image's objects, its caption and its GenEval metadata, for category ``tag``."""
    colors, shape = list(PALETTE), lambda: str(rng.choice(SHAPES))
    color = lambda: str(rng.choice(colors))
    if tag == "single_object":
        s = shape()
        specs, prompt = [(s, color())], f"a photo of a {s}"
        include = [{"class": s, "count": 1}]
    elif tag == "two_object":
        s1, s2 = (str(x) for x in rng.choice(SHAPES, 2, replace=False))
        specs, prompt = [(s1, color()), (s2, color())], f"a photo of a {s1} and a {s2}"
        include = [{"class": s1, "count": 1}, {"class": s2, "count": 1}]
    elif tag == "counting":
        s, n = shape(), int(rng.integers(2, 5))
        specs, prompt = [(s, color()) for _ in range(n)], f"a photo of {NUMBERS[n]} {s}s"
        include = [{"class": s, "count": n}]
    elif tag == "colors":
        s, c = shape(), color()
        specs, prompt = [(s, c)], f"a photo of a {c} {s}"
        include = [{"class": s, "count": 1, "color": c}]
    elif tag == "position":
        s1, s2 = (str(x) for x in rng.choice(SHAPES, 2, replace=False))
        rel = str(rng.choice(RELATIONS))
        specs, prompt = [(s1, color()), (s2, color())], f"a photo of a {s2} {rel} a {s1}"
        include = [{"class": s1, "count": 1}, {"class": s2, "count": 1, "position": [rel, 0]}]
    elif tag == "color_attr":
        s1, s2 = (str(x) for x in rng.choice(SHAPES, 2, replace=False))
        c1, c2 = (str(x) for x in rng.choice(colors, 2, replace=False))
        specs, prompt = [(s1, c1), (s2, c2)], f"a photo of a {c1} {s1} and a {c2} {s2}"
        include = [{"class": s1, "count": 1, "color": c1}, {"class": s2, "count": 1, "color": c2}]
    else:
        raise ValueError(f"tag {tag!r} is not one of {TAGS}")
    constraint = (lambda b: _relation_holds(rel, b[1], b[0], size)) if tag == "position" else None
    boxes = None
    while boxes is None:
        boxes = _place(rng, len(specs), size, constraint)
    objects = [ShapeObject(s, c, *box) for (s, c), box in zip(specs, boxes)]
    meta = {"tag": tag, "include": include, "prompt": prompt}
    if tag == "counting":
        meta["exclude"] = [{"class": include[0]["class"], "count": include[0]["count"] + 1}]
    return objects, prompt, meta


def vocabulary() -> list[str]:
    """Every word a caption of this set can hold (the tiny LLM's word-level vocabulary)."""
    words = {"a", "photo", "of", "and", "left", "right", "above", "below", *NUMBERS.values(), *PALETTE}
    return sorted(words | set(SHAPES) | {s + "s" for s in SHAPES})


def write_shapes(out: str | Path, num: int, size: int = 64, seed: int = 0, prompts_per_tag: int = 0) -> dict:
    """``drorae data shapes``: ``num`` image-caption pairs (``000000.png`` + ``000000.txt``) cycling through the six
    categories, ``metadata.jsonl`` (each image's GenEval metadata, in order) and, with ``prompts_per_tag``, an
    evaluation prompt set ``evaluation_metadata.jsonl`` drawn from another seed."""
    from PIL import Image

    if num < 1 or size < 32:
        raise ValueError(f"need --num >= 1 and --size >= 32, got {num} and {size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(num):
        objects, prompt, meta = make_example(rng, TAGS[i % len(TAGS)], size)
        Image.fromarray(draw(objects, size)).save(out / f"{i:06d}.png")
        (out / f"{i:06d}.txt").write_text(prompt)
        lines.append(json.dumps(meta))
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    if prompts_per_tag:
        eval_rng = np.random.default_rng(seed + 10_000)
        prompts = [make_example(eval_rng, tag, size)[2] for tag in TAGS for _ in range(prompts_per_tag)]
        (out.parent / f"{out.name}_evaluation_metadata.jsonl").write_text(
            "".join(json.dumps(m) + "\n" for m in prompts)
        )
    return {"pairs": num, "size": size, "out": str(out)}
