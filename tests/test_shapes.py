"""The synthetic shapes set and its scorer: 100% on its own ground truth in every category, and the expected failure
on images built to break each rule."""

import json
from dataclasses import replace

import numpy as np
import pytest

from drorae.cli import main
from drorae.data.shapes import TAGS, draw, make_example, vocabulary, write_shapes
from drorae.evaluation.shapes import detect_shapes, score_shapes


def examples(tag, n=40, seed=0):
    rng = np.random.default_rng(seed)
    return [make_example(rng, tag, 64) for _ in range(n)]


@pytest.mark.parametrize("tag", TAGS)
def test_scorer_is_right_on_every_ground_truth_image(tag):
    for objects, prompt, meta in examples(tag):
        ok, reason = score_shapes(draw(objects, 64), meta)
        assert ok, (prompt, reason)
        assert set(prompt.split()) <= set(vocabulary())


def test_detections_name_shape_colour_and_box():
    objects, _, _ = examples("colors", 1)[0]
    found = detect_shapes(draw(objects, 64))
    o = objects[0]
    boxes, colors = found[o.shape]
    assert colors == [o.color] and boxes.shape == (1, 5) and boxes[0, 4] == 1.0
    assert abs((boxes[0, 0] + boxes[0, 2]) / 2 - o.cx) < 1.0 and abs((boxes[0, 1] + boxes[0, 3]) / 2 - o.cy) < 1.0


def test_images_built_to_fail_each_rule_fail_it():
    # a wrong count: one object fewer than the caption asks, or one more (counting needs exactly N)
    for objects, _, meta in examples("counting", 10):
        fewer = objects[:-1]
        ok, reason = score_shapes(draw(fewer, 64), meta)
        assert not ok and reason.startswith(f"expected {objects[0].shape}>=")
    for objects, _, meta in examples("counting", 10, seed=2):
        n = meta["include"][0]["count"]
        bigger = {
            **meta,
            "include": [{**meta["include"][0], "count": n - 1}],
            "exclude": [{**meta["exclude"][0], "count": n}],
        }
        ok, reason = score_shapes(draw(objects, 64), bigger)
        assert not ok and reason == f"expected {objects[0].shape}<{n}, found {n}"
    # a wrong colour
    for objects, _, meta in examples("colors", 10):
        other = next(c for c in ("red", "green", "blue", "yellow") if c != objects[0].color)
        ok, reason = score_shapes(draw([replace(objects[0], color=other)], 64), meta)
        assert not ok and f"found 0 {objects[0].color}" in reason
    # swapped positions: the caption's relation reversed in the image
    for objects, _, meta in examples("position", 20):
        a, b = objects
        swapped = [replace(a, cx=b.cx, cy=b.cy), replace(b, cx=a.cx, cy=a.cy)]
        ok, reason = score_shapes(draw(swapped, 64), meta)
        assert not ok and "target, found" in reason
    # a missing second object
    for objects, _, meta in examples("two_object", 10):
        ok, reason = score_shapes(draw(objects[:1], 64), meta)
        assert not ok and reason == f"expected {objects[1].shape}>=1, found 0"


def test_data_shapes_writes_pairs_metadata_and_evaluation_prompts(tmp_path):
    assert main(["data", "shapes", str(tmp_path / "s"), "--num", "12", "--prompts-per-tag", "2"]) == 0
    assert len(list((tmp_path / "s").glob("*.png"))) == 12 and len(list((tmp_path / "s").glob("*.txt"))) == 12
    meta = [json.loads(line) for line in (tmp_path / "s" / "metadata.jsonl").read_text().splitlines()]
    assert [m["tag"] for m in meta] == TAGS * 2
    assert (tmp_path / "s" / "000003.txt").read_text() == meta[3]["prompt"]
    prompts = (tmp_path / "s_evaluation_metadata.jsonl").read_text().splitlines()
    assert len(prompts) == 12
    a = write_shapes(tmp_path / "again", 12, seed=0)
    assert (
        a["pairs"] == 12
        and (tmp_path / "again" / "000005.png").read_bytes() == (tmp_path / "s" / "000005.png").read_bytes()
    )


def test_eval_geneval_shapes_scores_a_sample_folder_as_the_scorer_does(tmp_path, capsys):
    """``drorae eval-geneval SAMPLES --shapes``: GenEval's results jsonl and summary for a sample-t2i folder, each
    image's verdict the scorer's own; the ground-truth image passes, another prompt's image put in its place fails
    where the scorer says it does; without --shapes the two networks are required (exit 2, naming them)."""
    from PIL import Image

    samples, expected = tmp_path / "samples", {}
    pairs = [example for tag in TAGS for example in examples(tag, 3, seed=5)]
    for i, (objects, _, meta) in enumerate(pairs):
        folder = samples / f"{i:05d}"
        (folder / "samples").mkdir(parents=True)
        (folder / "metadata.jsonl").write_text(json.dumps(meta) + "\n")
        for k, image in enumerate([draw(objects, 64), draw(pairs[(i + 1) % len(pairs)][0], 64)]):
            path = folder / "samples" / f"{k:04d}.png"
            Image.fromarray(image).save(path)
            expected[str(path)] = score_shapes(image, meta)[0]
    assert main(["eval-geneval", str(samples), "--shapes"]) == 0
    lines = [json.loads(line) for line in (samples / "geneval_results.jsonl").read_text().splitlines()]
    assert {r["filename"]: r["correct"] for r in lines} == expected
    assert all(r["correct"] for r in lines if r["filename"].endswith("0000.png"))
    assert not all(expected.values())
    summary = json.loads((samples / "geneval_summary.json").read_text())
    per_tag = {t: np.mean([r["correct"] for r in lines if r["tag"] == t]) for t in TAGS}
    assert summary["categories"] == pytest.approx(per_tag) and summary["overall"] == pytest.approx(
        np.mean(list(per_tag.values()))
    )
    assert summary["images"] == 2 * len(pairs) and json.loads(capsys.readouterr().out)["overall"] == summary["overall"]
    assert main(["eval-geneval", str(samples), "--clip", str(tmp_path)]) == 2
    assert "--detector required" in capsys.readouterr().err
