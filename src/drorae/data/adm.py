"""ADM's ImageNet centre crop (guided-diffusion's ``center_crop_arr``): the one transform that every evaluation
image, every reference image and every stage-2 training image goes through, so that reconstructions, samples and
their references are compared pixel for pixel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .folders import load_rgb


def adm_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """ADM's ImageNet centre crop (``center_crop_arr``) as uint8 ``[size, size, 3]``.

    Halve with a box filter while the shorter side is at least ``2 * size`` (cheap antialiasing), resize
    bicubically so the shorter side is ``size``, then cut the centred ``size x size`` square (integer offsets).
    """
    while min(image.size) >= 2 * size:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.Resampling.BOX)
    scale = size / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), resample=Image.Resampling.BICUBIC)
    pixels = np.asarray(image.convert("RGB"))
    top, left = (pixels.shape[0] - size) // 2, (pixels.shape[1] - size) // 2
    return pixels[top : top + size, left : left + size].copy()  # contiguous and writable (asarray's view is not)


def adm_item(path, index: int, size: int) -> dict[str, Any]:
    """A dataset item: ``{"image": uint8 [3, size, size], "index"}``, or ``{"image": None, "skipped": path}``."""
    image = load_adm_image(path, size)
    if image is None:
        return {"image": None, "index": index, "skipped": str(path)}
    return {"image": image, "index": index}


def load_adm_image(path: str | Path, size: int) -> Tensor | None:
    """One image file, ADM-centre-cropped, as uint8 ``[3, size, size]``; ``None`` if it cannot be decoded."""
    image = load_rgb(path)
    return None if image is None else torch.from_numpy(adm_center_crop(image, size)).permute(2, 0, 1)
