"""What GenEval's rules (``geneval``) and its models (``geneval_models``) share: the colour vocabulary, CLIP's
prompt templates for it and the shape of one detection. Its own module so that neither imports the other's."""

from __future__ import annotations

from typing import Any

import numpy as np

COLORS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"]
COLOR_TEMPLATES = ["a photo of a {c} {obj}", "a photo of a {c}-colored {obj}", "a photo of a {c} object"]

# one detection: (box [x1, y1, x2, y2, score], mask [H, W] bool or None)
Detection = tuple[np.ndarray, Any]
