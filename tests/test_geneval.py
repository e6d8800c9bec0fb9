"""GenEval's rules against GenEval's own code (fixture), each rule on hand-made detections, the summary, and
``eval-geneval`` end to end on tiny random Mask2Former and CLIP saved with ``save_pretrained``."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drorae.cli import main
from drorae.evaluation.geneval import (
    evaluate,
    keep_detections,
    relative_position,
    run_geneval,
    sample_images,
    summarize,
)

FIXTURE = Path(__file__).parent / "fixtures" / "geneval_rules" / "cases.json"


def norm_reason(reason: str) -> str:
    """GenEval joins a set of relations (order varies between runs); compare them sorted."""
    out = []
    for line in reason.split("\n"):
        if line.endswith(" target") and ", found " in line:
            head, found = line.rsplit(", found ", 1)
            line = head + ", found " + " and ".join(sorted(found[: -len(" target")].split(" and "))) + " target"
        out.append(line)
    return "\n".join(out)


def test_rules_equal_genevals_own_code_on_240_hand_made_detection_sets():
    cases = json.loads(FIXTURE.read_text())["cases"]
    assert {c["metadata"]["tag"] for c in cases} == {
        "single_object", "two_object", "counting", "colors", "position", "color_attr"
    }  # fmt: skip
    for i, case in enumerate(cases):
        per_class = {k: (np.array(v).reshape(-1, 5), None) for k, v in case["detections"].items()}
        objects = keep_detections(per_class, case["metadata"]["tag"])
        colors = lambda objs, name, c=case["colors"]: [c[f"{name}:{round(float(b[4]), 6)}"] for b, _ in objs]
        correct, reason = evaluate(objects, case["metadata"], colors)
        assert correct == case["correct"], (i, case["metadata"], reason, case["reason"])
        assert norm_reason(reason) == norm_reason(case["reason"]), i
        assert sorted(objects) == sorted(case["details"]), i  # the kept classes, then their boxes in order
        for name, kept in objects.items():
            np.testing.assert_allclose(
                np.stack([b for b, _ in kept]), np.array(case["details"][name]), rtol=0, atol=1e-9
            )


def box(x1, y1, x2, y2, score=0.95):
    return np.array([x1, y1, x2, y2, score], dtype=np.float64), None


def test_position_rule_by_hand():
    a, b = box(0, 40, 20, 60), box(100, 40, 120, 60)  # a far left of b
    assert relative_position(a, b) == ["left of"] and relative_position(b, a) == ["right of"]
    above, below = box(50, 0, 70, 20), box(50, 100, 70, 120)
    assert relative_position(above, below) == ["above"]  # image y grows downwards
    # offsets within 0.1 x the summed sizes do not count: centres 3 px apart on objects 20 px wide
    assert relative_position(box(0, 0, 20, 20), box(3, 0, 23, 20)) == []
    # a diagonal offset: both components after shrinking, normalised by the raw offset's length
    assert relative_position(box(0, 0, 10, 10), box(100, 100, 110, 110)) == ["left of", "above"]


def test_count_exclude_color_and_missing_target_rules_by_hand():
    dets = {"dog": [box(0, 0, 10, 10, 0.99), box(20, 0, 30, 10, 0.98), box(40, 0, 50, 10, 0.5)]}
    always_red = lambda objs, name: ["red"] * len(objs)
    counting = {"tag": "counting", "include": [{"class": "dog", "count": 2}], "exclude": [{"class": "dog", "count": 3}]}
    assert evaluate(dets, counting, always_red) == (False, "expected dog<3, found 3")  # exactly two are asked for
    kept = keep_detections({"dog": (np.stack([d[0] for d in dets["dog"]]), None)}, "counting")
    assert len(kept["dog"]) == 2 and evaluate(kept, counting, always_red) == (True, "")  # 0.5 < 0.9 for counting
    wrong = {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "blue"}]}
    assert evaluate(dets, wrong, always_red) == (False, "expected blue dog>=1, found 0 blue; and 1 red")
    position = {
        "tag": "position",
        "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["left of", 0]}],
    }
    correct, reason = evaluate(dets, position, always_red)
    assert not correct and reason == "expected cat>=1, found 0\nno target for dog to be left of"


def test_summary_is_the_mean_over_images_per_tag_then_over_tags():
    rows = [
        {"tag": "colors", "correct": True, "metadata": "p1"},
        {"tag": "colors", "correct": False, "metadata": "p1"},
        {"tag": "colors", "correct": False, "metadata": "p2"},
        {"tag": "counting", "correct": True, "metadata": "p3"},
    ]
    s = summarize(rows)
    assert s["categories"] == {"colors": pytest.approx(1 / 3), "counting": 1.0}
    assert s["overall"] == pytest.approx((1 / 3 + 1) / 2) and s["correct_prompts"] == pytest.approx(2 / 3)


def tiny_clip(out: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["-"]
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    image = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image, tokenizer=CLIPTokenizer(vocab=vocab, merges=[])).save_pretrained(str(out))
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(str(out))
    return out


def tiny_mask2former(out: Path, names: list[str]) -> Path:
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    swin = SwinConfig(
        image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )  # fmt: skip
    cfg = Mask2FormerConfig(
        backbone_config=swin, hidden_dim=32, num_queries=8, encoder_layers=1, decoder_layers=2,
        encoder_feedforward_dim=64, dim_feedforward=64, num_attention_heads=2, mask_feature_size=32, feature_size=32,
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )  # fmt: skip
    torch.manual_seed(0)
    Mask2FormerForUniversalSegmentation(cfg).save_pretrained(str(out))
    Mask2FormerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def geneval_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("geneval_models")
    return tiny_mask2former(root / "m2f", ["person", "dog", "cat"]), tiny_clip(root / "clip")


def write_samples(root: Path) -> list[dict]:
    meta = [
        {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},
        {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "red"}], "prompt": "a photo of a red cat"},
    ]
    rng = np.random.default_rng(0)
    for i, m in enumerate(meta):
        (root / f"{i:05d}" / "samples").mkdir(parents=True)
        (root / f"{i:05d}" / "metadata.jsonl").write_text(json.dumps(m))
        for k in range(2):
            Image.fromarray(rng.integers(0, 255, (48, 56, 3), dtype=np.uint8)).save(
                root / f"{i:05d}/samples/{k:04d}.png"
            )
    return meta


def test_eval_geneval_runs_end_to_end_on_tiny_random_models(geneval_models, tmp_path, capsys):
    m2f, clip = geneval_models
    meta = write_samples(tmp_path / "s")
    assert [m for _, m in sample_images(tmp_path / "s")] == [meta[0], meta[0], meta[1], meta[1]]
    assert (
        main(["eval-geneval", str(tmp_path / "s"), "--detector", str(m2f), "--clip", str(clip), "--device", "cpu"]) == 0
    )
    rows = [json.loads(line) for line in (tmp_path / "s" / "geneval_results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {r["tag"] for r in rows} == {"single_object", "colors"}
    assert set(rows[0]) == {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"}
    assert json.loads(rows[0]["metadata"]) == meta[0]
    summary = json.loads((tmp_path / "s" / "geneval_summary.json").read_text())
    assert summary["images"] == 4 and summary["overall"] == pytest.approx(np.mean(list(summary["categories"].values())))
    assert '"overall"' in capsys.readouterr().out
    # the same scores from the library call, with GenEval's metadata file instead of the folders' copies
    lines = tmp_path / "evaluation_metadata.jsonl"
    lines.write_text("".join(json.dumps(m) + "\n" for m in meta))
    again = run_geneval(tmp_path / "s", m2f, clip, metadata=lines, out=tmp_path / "r.jsonl", device="cpu")
    assert again["categories"] == summary["categories"]


def test_missing_models_and_unknown_classes_are_named(geneval_models, tmp_path):
    m2f, clip = geneval_models
    write_samples(tmp_path / "s")
    with pytest.raises(FileNotFoundError, match="facebook/mask2former-swin-small-coco-instance"):
        run_geneval(tmp_path / "s", tmp_path / "nothing", clip, device="cpu")
    with pytest.raises(FileNotFoundError, match="openai/clip-vit-large-patch14"):
        run_geneval(tmp_path / "s", m2f, tmp_path / "nothing", device="cpu")
    other = tiny_mask2former(tmp_path / "m2f_other", ["person", "car"])
    with pytest.raises(ValueError, match=r"no classes \['cat', 'dog'\]"):
        run_geneval(tmp_path / "s", other, clip, device="cpu")
