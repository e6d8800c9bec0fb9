"""The scorer of the synthetic shapes set (:mod:`drorae.data.shapes`), with no network.

Each pixel takes the nearest palette colour (or white) within a distance; connected components of one colour above a
minimum area are objects; the share of its box an object fills names its shape (square ~1, circle ~pi/4, triangle
~1/2). The detections go through GenEval's rules (:mod:`drorae.evaluation.geneval`) unchanged, with the component's
colour standing in for CLIP's.
"""

from __future__ import annotations

import numpy as np

from ..data.shapes import PALETTE, WHITE
from .geneval import evaluate, keep_detections


def detect_shapes(image: np.ndarray, max_distance: float = 90.0, min_area: int = 12) -> dict:
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
            fill = region.area / ((y2 - y1) * (x2 - x1))
            shape = "square" if fill > 0.88 else ("circle" if fill > 0.64 else "triangle")
            entry = found.setdefault(shape, ([], []))
            entry[0].append([x1, y1, x2, y2, 1.0])
            entry[1].append(name)
    return {k: (np.array(b, dtype=np.float64), c) for k, (b, c) in found.items()}


def score_shapes(image: np.ndarray, metadata: dict) -> tuple[bool, str]:
    """GenEval's verdict on one image of the shapes set."""
    objects = keep_detections(detect_shapes(image), metadata["tag"])
    return evaluate(objects, metadata, lambda objs, _name: [color for _, color in objs])
