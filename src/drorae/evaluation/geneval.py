"""GenEval (Ghosh et al., NeurIPS 2023; djghosh13/geneval): object-focused scores of text-to-image samples.

The rules, as GenEval's ``evaluation/evaluate_images.py`` applies them (checked against its own code on hand-made
detections: ``tests/fixtures/geneval_rules``):

* detections of a class are kept above a score threshold (0.3; 0.9 for the ``counting`` tag), highest first, at
  most 16, with box NMS disabled (its default ``max_overlap`` 1.0);
* ``include``: at least ``count`` objects of the class; with ``color``, the colour CLIP assigns to each of the top
  ``count`` objects must be the asked one for all of them; with ``position [rel, i]``, every found object must stand
  in ``rel`` to every object matched by clause ``i``; ``exclude``: fewer than ``count`` objects (so a counting prompt
  needs exactly N);
* relative position from box centres, the offset shrunk by 0.1 x the summed widths (heights) and normalised by the
  offset's length, a relation where a component exceeds 0.5 (image y grows downwards: ``above`` is dy < -0.5);
* colour: the object masked onto grey ``#999``, cropped to its box, against the mean of three normalised text
  embeddings per colour ("a photo of a {c} {object}", "a photo of a {c}-colored {object}", "a photo of a {c} object");
* scores: per tag, the fraction of correct *images*; overall, the unweighted mean of the six tags.

Models from local ``transformers`` directories: Mask2Former COCO instance segmentation (GenEval uses mmdetection's
Mask2Former Swin-S; ``facebook/mask2former-swin-small-coco-instance`` is that architecture) and CLIP ViT-L/14
(``openai/clip-vit-large-patch14``, the weights of open_clip's ``ViT-L-14 openai``). Differences from GenEval's
pipeline, by construction: detections are decoded here as mmdetection decodes Mask2Former (top-100 query-class
pairs, score = class probability x mean mask probability inside the mask, mask = logit > 0 after bilinear
upsampling to the image, box = the mask's extent + 1) from ``transformers``' port, not by mmdetection itself; CLIP
runs through ``transformers``' processor (bicubic resize of the short side to 224, centre crop, CLIP's mean/std),
in float32 rather than GenEval's CUDA fp16; a reason naming two relations lists them in a fixed order (GenEval joins
a Python set, whose order varies between runs).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .geneval_common import COLORS, Detection

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
NMS_THRESHOLD = 1.0
POSITION_THRESHOLD = 0.1
TAGS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
RELATIONS = ["left of", "right of", "above", "below"]

ColorFn = Callable[[list[Detection], str], list[str]]


@dataclass(frozen=True)
class Rules:
    threshold: float = THRESHOLD
    counting_threshold: float = COUNTING_THRESHOLD
    max_objects: int = MAX_OBJECTS
    nms_threshold: float = NMS_THRESHOLD
    position_threshold: float = POSITION_THRESHOLD


GENEVAL_RULES = Rules()  # GenEval's defaults


def compute_iou(a, b) -> float:
    """Box IoU with inclusive pixel extents (GenEval's ``+ 1``)."""
    area = lambda box: max(box[2] - box[0] + 1, 0) * max(box[3] - box[1] + 1, 0)
    inter = area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    union = area(a) + area(b) - inter
    return inter / union if union else 0


def keep_detections(
    per_class: dict[str, tuple[np.ndarray, list | None]], tag: str, rules: Rules = GENEVAL_RULES
) -> dict[str, list[Detection]]:
    """``{class: (boxes [N, 5], masks or None)}`` -> the kept detections per class, highest score first (classes
    with none are absent)."""
    threshold = rules.counting_threshold if tag == "counting" else rules.threshold
    kept: dict[str, list[Detection]] = {}
    for name, (boxes, masks) in per_class.items():
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
        order = np.argsort(boxes[:, 4], kind="stable")[::-1]
        order = order[boxes[order, 4] > threshold][: rules.max_objects].tolist()
        found = []
        while order:
            best = order.pop(0)
            found.append((boxes[best], None if masks is None else masks[best]))
            if rules.nms_threshold != 1:
                order = [o for o in order if compute_iou(boxes[best], boxes[o]) < rules.nms_threshold]
        if found:
            kept[name] = found
    return kept


def relative_position(obj_a: Detection, obj_b: Detection, threshold: float = POSITION_THRESHOLD) -> list[str]:
    """The relations of A to B (``left of``, ``right of``, ``above``, ``below``), in that order."""
    boxes = np.array([obj_a[0][:4], obj_b[0][:4]], dtype=np.float64).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - threshold * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return []
    dx, dy = revised / np.linalg.norm(offset)
    flags = [dx < -0.5, dx > 0.5, dy < -0.5, dy > 0.5]
    return [r for r, on in zip(RELATIONS, flags) if on]


def evaluate(objects: dict[str, list[Detection]], metadata: dict, colors_of: ColorFn, rules: Rules = GENEVAL_RULES):
    """``(correct, reason)`` of one image's kept detections against its GenEval metadata; ``colors_of(objects,
    class)`` names the colour of each object."""
    correct, reason, matched_groups = True, [], []
    for req in metadata.get("include", []):
        name, count = req["class"], req["count"]
        matched = True
        found = objects.get(name, [])[:count]
        if len(found) < count:
            correct = matched = False
            reason.append(f"expected {name}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = colors_of(found, name)
                if colors.count(req["color"]) < count:
                    correct = matched = False
                    reason.append(
                        f"expected {req['color']} {name}>={count}, found {colors.count(req['color'])} {req['color']}; "
                        "and " + ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
                    )
            if "position" in req and matched:
                relation, target = req["position"]
                if matched_groups[target] is None:
                    correct = matched = False
                    reason.append(f"no target for {name} to be {relation}")
                else:
                    for obj in found:
                        for other in matched_groups[target]:
                            found_relations = relative_position(obj, other, rules.position_threshold)
                            if relation not in found_relations:
                                correct = matched = False
                                reason.append(
                                    f"expected {name} {relation} target, found {' and '.join(found_relations)} target"
                                )
                                break
                        if not matched:
                            break
        matched_groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        name = req["class"]
        if len(objects.get(name, [])) >= req["count"]:
            correct = False
            reason.append(f"expected {name}<{req['count']}, found {len(objects[name])}")
    return correct, "\n".join(reason)


def summarize(results: list[dict]) -> dict[str, Any]:
    """GenEval's ``summary_scores.py``: per tag the fraction of correct images, overall their unweighted mean."""
    tags: dict[str, list[bool]] = {}
    prompts: dict[str, list[bool]] = {}
    for r in results:
        tags.setdefault(r["tag"], []).append(bool(r["correct"]))
        prompts.setdefault(r["metadata"], []).append(bool(r["correct"]))
    categories = {t: float(np.mean(v)) for t, v in tags.items()}
    return {
        "overall": float(np.mean(list(categories.values()))) if categories else float("nan"),
        "categories": categories,
        "counts": {t: [int(sum(v)), len(v)] for t, v in tags.items()},
        "images": len(results),
        "prompts": len(prompts),
        "correct_images": float(np.mean([r["correct"] for r in results])) if results else float("nan"),
        "correct_prompts": float(np.mean([any(v) for v in prompts.values()])) if prompts else float("nan"),
    }


def result_record(filename: str, metadata: dict, objects: dict[str, list[Detection]], correct: bool, reason: str):
    """One line of GenEval's results jsonl (``metadata`` and ``details`` as JSON strings, as it writes them)."""
    return {
        "filename": filename,
        "tag": metadata["tag"],
        "prompt": metadata["prompt"],
        "correct": bool(correct),
        "reason": reason,
        "metadata": json.dumps(metadata),
        "details": json.dumps({k: [np.asarray(box).tolist() for box, _ in v] for k, v in objects.items()}),
    }


def sample_images(samples_dir: str | Path, metadata_file: str | Path | None = None):
    """``[(image path, metadata)]`` of a GenEval folder (``<digits>/samples/<digits>.png``), prompt folders in
    numeric order; the metadata from each folder's ``metadata.jsonl`` or line ``index`` of ``metadata_file``."""
    root = Path(samples_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"samples folder {root} not found")
    lines = None
    if metadata_file is not None:
        lines = [json.loads(line) for line in Path(metadata_file).read_text().splitlines() if line.strip()]
    out = []
    for folder in sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        if lines is not None:
            if int(folder.name) >= len(lines):
                raise ValueError(f"{folder}: no line {int(folder.name)} in {metadata_file} ({len(lines)} lines)")
            meta = lines[int(folder.name)]
        else:
            meta_path = folder / "metadata.jsonl"
            if not meta_path.is_file():
                raise FileNotFoundError(f"{meta_path} not found (give --metadata evaluation_metadata.jsonl)")
            meta = json.loads(meta_path.read_text())
        for tag_key in ("tag", "prompt"):
            if tag_key not in meta:
                raise ValueError(f"{folder}: its metadata has no {tag_key!r} (GenEval's metadata format)")
        images = sorted(p for p in (folder / "samples").glob("*.png") if re.match(r"\d+\.png", p.name))
        out += [(p, meta) for p in images]
    if not out:
        raise ValueError(f"no <index>/samples/<k>.png images under {root}")
    return out


def run_geneval(
    samples_dir: str | Path,
    detector_dir: str | Path,
    clip_dir: str | Path,
    *,
    out: str | Path | None = None,
    metadata: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 8,
    rules: Rules = GENEVAL_RULES,
) -> dict[str, Any]:
    """``drorae eval-geneval``: GenEval's results jsonl and a summary JSON (``geneval_summary.json``)."""
    import torch
    from PIL import Image, ImageOps

    from .geneval_models import ClipColors, Mask2FormerDetector

    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    items = sample_images(samples_dir, metadata)
    detector = Mask2FormerDetector(detector_dir, dev)
    colors = ClipColors(clip_dir, dev)
    needed = {req["class"] for _, m in items for req in m.get("include", []) + m.get("exclude", [])}
    unknown = sorted(needed - set(detector.class_names))
    if unknown:
        raise ValueError(f"the detector {detector_dir} has no classes {unknown} (GenEval's prompts use COCO's 80)")
    results = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        images = [ImageOps.exif_transpose(Image.open(p)).convert("RGB") for p, _ in chunk]
        for (path, meta), image, per_class in zip(chunk, images, detector.detect(images)):
            objects = keep_detections(per_class, meta["tag"], rules)
            colors_of = lambda objs, name, image=image: colors.classify(image, objs, name)
            correct, reason = evaluate(objects, meta, colors_of, rules)
            results.append(result_record(str(path), meta, objects, correct, reason))
    return write_results(results, samples_dir, out)


def write_results(results: list[dict], samples_dir: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """GenEval's results jsonl (default ``SAMPLES/geneval_results.jsonl``) and ``geneval_summary.json`` beside it."""
    out = Path(out) if out is not None else Path(samples_dir) / "geneval_results.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in results))
    summary = {**summarize(results), "results": str(out)}
    (out.parent / "geneval_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
