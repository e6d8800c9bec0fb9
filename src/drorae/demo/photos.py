"""An offline sample dataset of real photos, for the demo and the tests.

scikit-image bundles a few photos inside its wheel (:data:`PHOTO_SOURCES`), so they load
without a network. They are split *by photo* into a training set and a held-out set
(:data:`HELDOUT_PHOTOS`): crops of a held-out photo are never seen in training, so held-out
reconstruction measures generalisation to new images rather than to new crops of known ones.

- :func:`load_photos` returns the photos of a split as uint8 ``H x W x 3`` arrays
  (grayscale photos are replicated to RGB).
- :class:`RandomCropDataset` draws scale-jittered random crops, reproducibly per
  ``(seed, epoch, index)``, in the same sample format as
  :class:`~drorae.data.folders.ImageFolderDataset`.
- :func:`fixed_eval_crops` gives a fixed, seeded tensor of crops for evaluation.
- :func:`write_sample_dataset` writes the photos as PNG folders that
  :class:`~drorae.data.folders.ImageFolderDataset` reads.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.folders import EpochSeededDataset, pil_to_tensor, sample_generator, to_rgb

__all__ = [
    "HELDOUT_PHOTOS",
    "PHOTO_NAMES",
    "PHOTO_SOURCES",
    "SPLITS",
    "TRAIN_PHOTOS",
    "RandomCropDataset",
    "fixed_eval_crops",
    "load_photo",
    "load_photos",
    "write_eval_crops",
    "write_sample_dataset",
]


@dataclass(frozen=True)
class PhotoSource:
    """Where a sample photo comes from in ``skimage.data``.

    Attributes:
        loader: name of the public ``skimage.data`` function.
        filename: the file it reads, bundled in ``skimage.data.data_dir``; checked before
            loading so that a scikit-image version without it fails clearly instead of
            trying to download.
        item: element of the loader's result when it returns a tuple (stereo views).
    """

    loader: str
    filename: str
    item: int | None = None


#: The photos that load offline from scikit-image (checked with scikit-image 0.26: every
#: file below ships in the wheel). Grayscale ones are converted to RGB on loading.
PHOTO_SOURCES: dict[str, PhotoSource] = {
    # colour
    "astronaut": PhotoSource("astronaut", "astronaut.png"),
    "chelsea": PhotoSource("chelsea", "chelsea.png"),  # the cat
    "coffee": PhotoSource("coffee", "coffee.png"),
    "hubble_deep_field": PhotoSource("hubble_deep_field", "hubble_deep_field.jpg"),
    "immunohistochemistry": PhotoSource("immunohistochemistry", "ihc.png"),
    "retina": PhotoSource("retina", "retina.jpg"),
    "rocket": PhotoSource("rocket", "rocket.jpg"),
    "motorcycle_left": PhotoSource("stereo_motorcycle", "motorcycle_left.png", item=0),
    "motorcycle_right": PhotoSource("stereo_motorcycle", "motorcycle_right.png", item=1),
    "colorwheel": PhotoSource("colorwheel", "color.png"),
    # grayscale
    "brick": PhotoSource("brick", "brick.png"),
    "grass": PhotoSource("grass", "grass.png"),
    "gravel": PhotoSource("gravel", "gravel.png"),
    "camera": PhotoSource("camera", "camera.png"),
    "moon": PhotoSource("moon", "moon.png"),
    "coins": PhotoSource("coins", "coins.png"),
    "clock": PhotoSource("clock", "clock_motion.png"),
    "page": PhotoSource("page", "page.png"),
    "text": PhotoSource("text", "text.png"),
    "cell": PhotoSource("cell", "cell.png"),
}

#: All sample photo names, in a fixed order.
PHOTO_NAMES: tuple[str, ...] = tuple(PHOTO_SOURCES)
#: Photos kept out of training: two colour, one grayscale texture.
HELDOUT_PHOTOS: tuple[str, ...] = ("coffee", "rocket", "brick")
#: Everything else trains. The two stereo views are near-duplicates and share this split.
TRAIN_PHOTOS: tuple[str, ...] = tuple(n for n in PHOTO_NAMES if n not in HELDOUT_PHOTOS)
#: Split names accepted by :func:`load_photos`.
SPLITS: dict[str, tuple[str, ...]] = {
    "train": TRAIN_PHOTOS,
    "heldout": HELDOUT_PHOTOS,
    "all": PHOTO_NAMES,
}


@functools.cache
def load_photo(name: str) -> np.ndarray:
    """One sample photo as a read-only uint8 array ``[H, W, 3]`` (cached; copy to modify)."""
    if name not in PHOTO_SOURCES:
        raise KeyError(f"unknown sample photo {name!r}; known: {', '.join(PHOTO_NAMES)}")
    import skimage
    import skimage.data

    source = PHOTO_SOURCES[name]
    bundled = Path(skimage.data.data_dir) / source.filename
    if not bundled.is_file():
        raise RuntimeError(
            f"sample photo {name!r} needs {bundled}, which scikit-image {skimage.__version__} "
            "does not ship; loading it would need a download. Install scikit-image 0.26."
        )
    result = getattr(skimage.data, source.loader)()
    array = np.asarray(result[source.item] if source.item is not None else result)
    if array.dtype != np.uint8:
        raise RuntimeError(f"sample photo {name!r} loaded as {array.dtype}, expected uint8")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = np.asarray(to_rgb(Image.fromarray(array)))
    if array.ndim != 3 or array.shape[2] != 3:
        raise RuntimeError(f"sample photo {name!r} has unexpected shape {array.shape}")
    array = np.ascontiguousarray(array)
    array.setflags(write=False)  # shared through the cache
    return array


def load_photos(split: str = "train") -> dict[str, np.ndarray]:
    """The photos of ``split`` (``"train"``, ``"heldout"`` or ``"all"``), name -> uint8 RGB."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return {name: load_photo(name) for name in SPLITS[split]}


# --------------------------------------------------------------------------------------------
# Crops
# --------------------------------------------------------------------------------------------


def _as_images(photos: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> list[Image.Image]:
    arrays = list(photos.values()) if isinstance(photos, Mapping) else list(photos)
    if not arrays:
        raise ValueError("need at least one photo")
    images = []
    for array in arrays:
        array = np.asarray(array)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"photos must be uint8 [H, W, 3] arrays, got {array.dtype} {array.shape}")
        images.append(Image.fromarray(array))
    return images


def _check_scale(scale: tuple[float, float]) -> tuple[float, float]:
    low, high = float(scale[0]), float(scale[1])
    if not 0 < low <= high:
        raise ValueError(f"scale must satisfy 0 < low <= high, got {scale}")
    return low, high


def crop_window(
    image: Image.Image, size: int, scale: tuple[float, float], u_scale: float, u_x: float, u_y: float
) -> Image.Image:
    """The scale-jittered crop every demo data stream uses, from three uniform draws in [0, 1).

    A window of side ``size * s`` (``s`` log-uniform in ``scale``, at quantile ``u_scale``, so zooming
    in and out are equally likely; shrunk to the photo's shorter side if larger) at relative position
    ``(u_x, u_y)``, resized to ``size x size`` (bicubic; Pillow antialiases when downscaling).
    """
    log_low, log_high = math.log(scale[0]), math.log(scale[1])
    s = math.exp(log_low + (log_high - log_low) * u_scale)
    width, height = image.size
    side = min(size * s, width, height)
    left, top = (width - side) * u_x, (height - side) * u_y
    return image.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))


def _random_crop(
    image: Image.Image,
    crop_size: int,
    scale: tuple[float, float],
    generator: torch.Generator,
    flip: bool,
) -> torch.Tensor:
    """:func:`crop_window` from four draws of ``generator`` (scale, x, y, flip: fixed order), as a tensor."""
    draws = torch.rand(4, generator=generator).tolist()
    tensor = pil_to_tensor(crop_window(image, crop_size, scale, draws[0], draws[1], draws[2]))
    if flip and draws[3] < 0.5:
        tensor = tensor.flip(-1)
    return tensor


class RandomCropDataset(EpochSeededDataset):
    """Scale-jittered random crops of a few photos, reproducible per ``(seed, epoch, index)``.

    Sample ``index`` of epoch ``e`` picks a photo uniformly at random, a scale
    ``s`` log-uniformly in ``scale``, a ``crop_size * s`` window uniformly inside the photo,
    resizes it to ``crop_size x crop_size`` and, with ``random_flip``, mirrors it with
    probability 1/2; all of it from :func:`~drorae.data.folders.sample_generator` ``(seed, e, index)``.
    ``length`` is the number of samples of an epoch. Call :meth:`set_epoch` each epoch.

    Returns ``{"image": float tensor [3, crop_size, crop_size] in [0, 1], "index": index}``,
    the format of :class:`~drorae.data.folders.ImageFolderDataset`, so
    :func:`~drorae.data.folders.collate_skipping` collates it too.
    """

    def __init__(
        self,
        photos: Mapping[str, np.ndarray] | Sequence[np.ndarray],
        crop_size: int,
        length: int,
        scale: tuple[float, float] = (0.5, 2.0),
        seed: int = 0,
        *,
        random_flip: bool = True,
    ) -> None:
        if crop_size <= 0 or length <= 0:
            raise ValueError(f"crop_size and length must be positive, got {crop_size}, {length}")
        self.images = _as_images(photos)
        self.names: list[str] | None = list(photos) if isinstance(photos, Mapping) else None
        self.crop_size = int(crop_size)
        self.length = int(length)
        self.scale = _check_scale(scale)
        self.seed = int(seed)
        self.random_flip = bool(random_flip)
        super().__init__()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        generator = sample_generator(self.seed, self.epoch, index)
        photo = int(torch.randint(len(self.images), (1,), generator=generator).item())
        image = _random_crop(self.images[photo], self.crop_size, self.scale, generator, self.random_flip)
        return {"image": image, "index": index}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(photos={len(self.images)}, crop_size={self.crop_size}, "
            f"length={self.length}, scale={self.scale}, seed={self.seed})"
        )


def fixed_eval_crops(
    photos: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    crop_size: int,
    count: int,
    seed: int = 0,
    scale: tuple[float, float] = (0.5, 2.0),
) -> torch.Tensor:
    """A fixed set of ``count`` crops ``[count, 3, crop_size, crop_size]`` in ``[0, 1]``.

    Crop ``i`` comes from photo ``i % len(photos)`` (round robin, so every photo is equally
    represented), at a scale and place drawn from ``(seed, 0, i)``, never flipped. The same
    arguments give the same tensor on every call and machine.
    """
    if count <= 0 or crop_size <= 0:
        raise ValueError(f"count and crop_size must be positive, got {count}, {crop_size}")
    images = _as_images(photos)
    scale = _check_scale(scale)
    crops = [
        _random_crop(images[i % len(images)], crop_size, scale, sample_generator(seed, 0, i), False)
        for i in range(count)
    ]
    return torch.stack(crops)


# --------------------------------------------------------------------------------------------
# Writing image folders
# --------------------------------------------------------------------------------------------


def write_sample_dataset(out_dir: str | os.PathLike, crop_size: int | None = None) -> dict[str, int]:
    """Write the sample photos as ``out_dir/train/<photo>.png`` and ``out_dir/heldout/<photo>.png``.

    With ``crop_size=None`` the photos are written at full resolution. With an integer, each
    photo is first downscaled (bicubic, antialiased; never upscaled) so that its shorter side
    is at most ``crop_size``: a small copy for quick runs, that
    ``ImageFolderDataset(..., image_size=crop_size)`` then only needs to centre-crop.

    Returns the number of photos written per split, e.g. ``{"train": 18, "heldout": 3}``.
    """
    if crop_size is not None and crop_size <= 0:
        raise ValueError(f"crop_size must be positive or None, got {crop_size}")
    out_dir = Path(out_dir)
    counts: dict[str, int] = {}
    for split in ("train", "heldout"):
        split_dir = out_dir / split
        split_dir.mkdir(parents=True, exist_ok=True)
        for name, array in load_photos(split).items():
            image = Image.fromarray(array)
            if crop_size is not None and min(image.size) > crop_size:
                factor = crop_size / min(image.size)
                width = max(crop_size, round(image.width * factor))
                height = max(crop_size, round(image.height * factor))
                image = image.resize((width, height), Image.Resampling.BICUBIC)
            image.save(split_dir / f"{name}.png")
        counts[split] = len(SPLITS[split])
    return counts


def write_eval_crops(
    out_dir: str | os.PathLike, crop_size: int, count: int, seed: int = 1, split: str = "heldout"
) -> int:
    """Write :func:`fixed_eval_crops` of a split's photos (default the HELD-OUT ones) as ``out_dir/crop_XXXXX.png``:
    the demo's evaluation set (or a training set of crops) as an image folder that ``drorae eval`` and
    ``drorae train`` read; the crops are already ``crop_size`` squares."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    crops = fixed_eval_crops(load_photos(split), crop_size, count, seed=seed)
    for i, crop in enumerate(crops):
        pixels = (crop.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(pixels).save(out_dir / f"crop_{i:05d}.png")
    return count


def write_class_crops(
    out_dir: str | os.PathLike, crop_size: int, per_class: int, seed: int = 3, split: str = "train"
) -> dict[str, int]:
    """Write ``per_class`` fixed crops of every photo of a split as ``out_dir/<photo>/crop_XXXXX.png``: a
    class-conditional data set (class = source photo) for the generation stage. Returns ``{photo: count}``."""
    out_dir = Path(out_dir)
    photos = load_photos(split)
    crops = fixed_eval_crops(photos, crop_size, per_class * len(photos), seed=seed)
    names = list(photos)
    for i, crop in enumerate(crops):
        folder = out_dir / names[i % len(names)]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (crop.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"crop_{i // len(names):05d}.png")
    return dict.fromkeys(names, per_class)
