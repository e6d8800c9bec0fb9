"""The scorer of the synthetic shapes set (:mod:`drorae.data.shapes`), with no network.

Each pixel takes the nearest palette colour (or white) within a distance; connected components of one colour above a
minimum area are objects; the shape drawn in the object's box (circle, square, triangle) that overlaps its pixels
best (IoU) names it, which survives a decoder's rounded corners and ragged edges better than a fill ratio does.
The detections go through GenEval's rules (:mod:`drorae.evaluation.geneval`) unchanged, with the component's
colour standing in for CLIP's.
"""

from __future__ import annotations

import numpy as np

from ..data.shapes import PALETTE, SHAPES, WHITE, ShapeObject, draw
from .geneval import evaluate, keep_detections, result_record, sample_images, write_results


def _templates(h: int, w: int) -> dict[str, np.ndarray]:
    """Each shape drawn to fill an ``h`` x ``w`` box (as :func:`~drorae.data.shapes.draw` draws it), as masks."""
    side = max(h, w)
    return {s: draw([ShapeObject(s, "red", w / 2, h / 2, side / 2)], side)[:h, :w, 1] < 128 for s in SHAPES}


def detect_shapes(image: np.ndarray, max_distance: float = 110.0, min_area: int = 12) -> dict:
    """``{shape: (boxes [N, 5], colours [N])}`` of an RGB uint8 image: GenEval's detection format with score 1 and
    box ``[x1, y1, x2 + 1, y2 + 1]`` (mmdetection's mask box), the colour in place of the mask."""
    from skimage.measure import label, regionprops

    names = list(PALETTE)
    ref = np.array([PALETTE[n] for n in names] + [WHITE], dtype=np.float64)
    dist = np.linalg.norm(image[..., None, :].astype(np.float64) - ref, axis=-1)  # [H, W, colours + 1]
    nearest = dist.argmin(-1)
    found: dict[str, tuple[list, list]] = {}
    for ci, name in enumerate(names):
        mask = (nearest == ci) & (dist[..., ci] < max_distance)
        for region in regionprops(label(mask, connectivity=1)):
            if region.area < min_area:
                continue
            y1, x1, y2, x2 = region.bbox  # exclusive ends: mmdetection's x_max + 1
            pixels = region.image
            iou = {s: (pixels & t).sum() / max((pixels | t).sum(), 1) for s, t in _templates(y2 - y1, x2 - x1).items()}
            entry = found.setdefault(max(iou, key=iou.get), ([], []))
            entry[0].append([x1, y1, x2, y2, 1.0])
            entry[1].append(name)
    return {k: (np.array(b, dtype=np.float64), c) for k, (b, c) in found.items()}


def _verdict(image: np.ndarray, metadata: dict) -> tuple[dict, bool, str]:
    objects = keep_detections(detect_shapes(image), metadata["tag"])
    return objects, *evaluate(objects, metadata, lambda objs, _name: [color for _, color in objs])


def score_shapes(image: np.ndarray, metadata: dict) -> tuple[bool, str]:
    """GenEval's verdict on one image of the shapes set."""
    return _verdict(image, metadata)[1:]


def run_shapes_eval(samples_dir, *, out=None, metadata=None) -> dict:
    """``drorae eval-geneval SAMPLES --shapes``: GenEval's results jsonl and summary for a ``sample-t2i`` folder of
    shapes-set prompts, with this network-free scorer in place of Mask2Former and CLIP."""
    from PIL import Image

    results = []
    for path, meta in sample_images(samples_dir, metadata):
        objects, correct, reason = _verdict(np.array(Image.open(path).convert("RGB")), meta)
        results.append(result_record(str(path), meta, objects, correct, reason))
    return write_results(results, samples_dir, out)
