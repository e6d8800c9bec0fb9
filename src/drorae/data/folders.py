"""Image-folder data for training a visual tokenizer.

The pieces here are small and independent:

- :func:`list_images` finds the images of a folder (flat or with class sub-folders).
- :func:`load_rgb` decodes one file into 8-bit RGB, whatever its mode, or returns ``None``
  when the file cannot be decoded.
- :class:`ImageFolderDataset` resizes and centre-crops to a square and optionally flips.
  An unreadable file does not crash a worker: its sample is marked as skipped.
- :func:`collate_skipping` drops skipped samples from a batch but keeps their paths in the
  batch, so the accounting travels from DataLoader workers to the main process, where a
  :class:`SkipCounter` accumulates it.
- :class:`ResumableSampler` shuffles and shards indices per rank and records how far an
  epoch went, so that a resumed run continues with exactly the samples it had not seen.

Determinism: every random decision of a sample (a flip, a crop) comes from a generator seeded
by ``(seed, epoch, index)`` (:func:`sample_generator`), never from a global RNG. The data a run
sees therefore does not depend on the number of DataLoader workers, on their scheduling, or on
whether the run was resumed from a checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, Sampler

from .image_files import IMAGE_EXTENSIONS, list_image_files
from .shards import TarMember, index_shards, is_shard_spec

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "ResumableSampler",
    "SkipCounter",
    "collate_skipping",
    "derive_seed",
    "list_images",
    "load_rgb",
    "pil_to_tensor",
    "sample_generator",
    "to_rgb",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------------
# Seeding
# --------------------------------------------------------------------------------------------


def derive_seed(*keys: int) -> int:
    """Hash non-negative integers into one well-mixed 64-bit seed.

    ``numpy.random.SeedSequence`` does the mixing; the number of keys is prepended because
    SeedSequence alone gives ``(a, b)`` and ``(a, b, 0)`` the same state.
    """
    if any(k < 0 for k in keys):
        raise ValueError(f"seed keys must be non-negative integers, got {keys}")
    state = np.random.SeedSequence([len(keys), *map(int, keys)]).generate_state(1, np.uint64)
    return int(state[0])


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A fresh CPU generator for the random decisions of one sample of one epoch."""
    return torch.Generator().manual_seed(derive_seed(seed, epoch, index))


class _SharedEpoch:
    """An epoch number that DataLoader workers see, persistent workers included.

    A dataset is copied into each worker process when the loader's iterator starts. With
    ``persistent_workers=True`` that copy lives on, and a plain attribute set by
    ``set_epoch`` in the main process would never reach it. A one-element tensor in shared
    memory does: forked workers inherit the mapping, and spawned ones receive it through
    torch's multiprocessing pickler.
    """

    def __init__(self, epoch: int = 0) -> None:
        self._value = torch.full((1,), int(epoch), dtype=torch.int64).share_memory_()

    def get(self) -> int:
        return int(self._value.item())

    def set(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._value.fill_(int(epoch))


class EpochSeededDataset(Dataset):
    """Base for datasets whose randomness is a function of ``(seed, epoch, index)``.

    ``set_epoch`` reaches DataLoader workers (persistent ones included) through a shared tensor.
    """

    def __init__(self) -> None:
        self._epoch = _SharedEpoch()

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws ``__getitem__`` makes."""
        self._epoch.set(epoch)


# --------------------------------------------------------------------------------------------
# Listing and decoding
# --------------------------------------------------------------------------------------------


def list_images(root: PathLike) -> list[Path]:
    """All image files under ``root``, recursively, in a deterministic order.

    Works for a flat folder and for class sub-folders alike (the classes are ignored: a
    tokenizer needs no labels). Extensions are matched case-insensitively against
    :data:`IMAGE_EXTENSIONS`. Hidden files and folders (name starting with ``.``) are skipped:
    they are macOS ``._*`` resource forks, ``.ipynb_checkpoints`` and the like, never data.
    Symlinked folders are followed. The result is sorted by path relative to ``root`` (POSIX
    form), so every machine and every rank lists the same files in the same order.

    ``root`` may also be tar shards written by ``drorae data shard`` (a ``.tar``, a folder of them or a
    ``{000..009}`` pattern, see :mod:`drorae.data.shards`): the result is then their image members
    (:class:`~drorae.data.shards.TarMember`), in the folder order they were written in.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: ``root`` is not a folder, or holds no image.
    """
    if is_shard_spec(root):  # tar shards (drorae data shard): their members, in the order they were written
        return index_shards(root)[0]
    return list_image_files(root)


_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def _composite_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded PIL image of any common mode to 8-bit RGB.

    - ``RGB`` is copied; ``L`` and ``1`` (grayscale, bilevel) are replicated to 3 channels.
    - 16-bit grayscale (``I;16``, ``I;16B``, ``I;16L``, and ``I``, which older Pillow versions
      used for 16-bit PNGs) is *scaled* from [0, 65535] to [0, 255] with rounding, so a
      16-bit ramp spans the full 8-bit range instead of saturating at 255. Values of an ``I``
      image outside [0, 65535] are clipped first.
    - ``CMYK`` is converted with Pillow's formula ``(255 - C) * (255 - K) / 255``; a file
      that embeds an ICC profile is converted through that profile to sRGB instead.
    - Transparency (``RGBA``, ``LA``, ``PA``, premultiplied modes, and palette or colour-key
      transparency declared in ``image.info``) is **composited on a white background**, not
      dropped: fully transparent pixels often hold arbitrary colours that were never meant
      to be seen, and white is how viewers usually show such images.
    - Anything else (``YCbCr``, ``F``...) goes through ``Image.convert("RGB")``.
    """
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64)
        values = np.clip(values, 0, 65535)
        gray = ((values * 255 + 32767) // 65535).astype(np.uint8)  # rounded /257
        return Image.fromarray(np.stack([gray] * 3, axis=-1))
    if mode == "CMYK":
        converted = _cmyk_with_icc(image)
        return converted if converted is not None else image.convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_on_white(image)
    return image.convert("RGB")


def _cmyk_with_icc(image: Image.Image) -> Image.Image | None:
    """CMYK -> sRGB through the embedded ICC profile, or ``None`` when that is not possible."""
    profile = image.info.get("icc_profile")
    if not profile:
        return None
    try:
        import io

        from PIL import ImageCms

        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except Exception:  # a broken profile or Pillow built without LittleCMS: use the formula
        return None


def load_rgb(path: PathLike) -> Image.Image | None:
    """Decode an image file into an 8-bit RGB PIL image, or ``None`` if it cannot be decoded.

    The pixels are fully decoded here (``Image.load()``), so a truncated or corrupt file is
    detected now rather than later in a transform; Pillow's global
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left alone, so truncated files are rejected, not
    padded with grey. Any decoding error (not an image, truncated, corrupt, unsupported)
    returns ``None``; the caller decides how to account for it. The EXIF orientation tag is
    applied, so photos appear upright. See :func:`to_rgb` for the mode conversions.
    """
    try:
        with Image.open(path.open() if isinstance(path, TarMember) else path) as image:
            image.load()
            try:
                # Cameras store rotated pixels plus an orientation tag; a bad tag is not fatal.
                image = ImageOps.exif_transpose(image)
            except Exception:
                pass
            return to_rgb(image)  # always a new image, independent of the closed file
    except Exception as error:  # Pillow raises many types (OSError, SyntaxError, ValueError...)
        logger.debug("cannot decode %s: %s", path, error)
        return None


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image to a float tensor ``[3, H, W]`` in ``[0, 1]``."""
    array = np.array(image, dtype=np.uint8, copy=True)  # writable, so torch does not warn
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


def _resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` and centre-crop to ``size x size`` in one step.

    Resampling the central square box directly gives the same result as resize-then-crop
    without rounding the intermediate size. Pillow's bicubic filter widens its support when
    downscaling, i.e. it is antialiased.
    """
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2.0, (height - side) / 2.0
    box = (left, top, left + side, top + side)
    return image.resize((size, size), Image.Resampling.BICUBIC, box=box)


def _resize_random_crop(image: Image.Image, resize: int, size: int, generator: torch.Generator) -> Image.Image:
    """RAE's training crop: the shorter side to ``resize`` (bicubic, torchvision's rounding of the longer side),
    then a ``size x size`` window at a uniformly drawn offset."""
    width, height = image.size
    if width <= height:
        new = (resize, int(resize * height / width))
    else:
        new = (int(resize * width / height), resize)
    image = image.resize(new, Image.Resampling.BICUBIC)
    top = int(torch.randint(0, new[1] - size + 1, (), generator=generator))
    left = int(torch.randint(0, new[0] - size + 1, (), generator=generator))
    return image.crop((left, top, left + size, top + size))


# --------------------------------------------------------------------------------------------
# Dataset, collation and skip accounting
# --------------------------------------------------------------------------------------------


class ImageFolderDataset(EpochSeededDataset):
    """Square, optionally flipped crops of the images of a folder.

    ``crop="center"``: each image is resized so that its shorter side equals ``image_size`` (bicubic,
    antialiased) and centre-cropped to ``image_size x image_size``. ``crop="random"`` (RAE's stage-1 data):
    the shorter side goes to ``resize`` (RAE: 384 for 256 px) and a random ``image_size`` window is cut.
    The result is a float tensor ``[3, H, W]`` in ``[0, 1]``. With ``random_flip`` it is mirrored
    horizontally with probability 1/2. Every draw comes from :func:`sample_generator` ``(seed, epoch,
    index)``; call :meth:`set_epoch` at the start of every epoch (before iterating the DataLoader).

    ``__getitem__`` returns ``{"image": tensor, "index": index}``, or for a file that cannot
    be decoded ``{"image": None, "index": index, "skipped": str(path)}``. Use
    :func:`collate_skipping` as the DataLoader's ``collate_fn``.
    """

    def __init__(
        self,
        root: PathLike,
        image_size: int,
        random_flip: bool = True,
        *,
        seed: int = 0,
        crop: str = "center",
        resize: int = 0,
    ) -> None:
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if crop not in ("center", "random"):
            raise ValueError(f"crop={crop!r} is not center or random")
        self.crop = crop
        self.resize = int(resize) or int(image_size)
        if self.resize < image_size:
            raise ValueError(f"resize={resize} is smaller than image_size={image_size}")
        self.root = Path(root)
        self.paths: list[Path] = list_images(self.root)
        self.image_size = int(image_size)
        self.random_flip = bool(random_flip)
        self.seed = int(seed)
        super().__init__()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        image = load_rgb(path)
        if image is None:
            return {"image": None, "index": index, "skipped": str(path)}
        generator = sample_generator(self.seed, self.epoch, index)
        if self.crop == "random":
            image = _resize_random_crop(image, self.resize, self.image_size, generator)
        else:
            image = _resize_center_crop(image, self.image_size)
        tensor = pil_to_tensor(image)
        if self.random_flip:
            if torch.rand((), generator=generator).item() < 0.5:
                tensor = tensor.flip(-1)
        return {"image": tensor, "index": index}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, images={len(self)}, "
            f"image_size={self.image_size}, crop={self.crop!r}, resize={self.resize}, random_flip={self.random_flip}, "
            f"seed={self.seed})"
        )


def collate_skipping(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Collate samples, dropping those that could not be decoded.

    Returns a dict with

    - ``images``: float tensor ``[B, 3, H, W]`` of the good samples (``B`` may be smaller
      than the batch size; it is 0, with shape ``[0, 3, 0, 0]``, if every file failed),
    - ``indices``: ``LongTensor [B]``, dataset indices of those images,
    - ``skipped``: ``list[str]``, paths of the samples dropped from this batch,
    - ``num_samples``: ``int``, samples drawn for this batch, good and skipped; this is what
      a :class:`ResumableSampler` must :meth:`~ResumableSampler.advance` by.

    As the function runs inside the worker process, the skip information travels to the
    main process together with the batch.
    """
    good = [sample for sample in batch if sample.get("image") is not None]
    skipped = [str(sample["skipped"]) for sample in batch if sample.get("image") is None]
    if good:
        images = torch.stack([sample["image"] for sample in good])
    else:
        images = torch.empty((0, 3, 0, 0))
    indices = torch.tensor([int(sample["index"]) for sample in good], dtype=torch.long)
    return {"images": images, "indices": indices, "skipped": skipped, "num_samples": len(batch)}


class SkipCounter:
    """Accumulates the unreadable files reported by :func:`collate_skipping` batches.

    ``count`` is the number of *distinct* files skipped, so a corrupt file met again in a
    later epoch is not counted twice; ``total`` counts every dropped sample. The first
    ``max_warnings`` distinct files are logged as warnings when first seen.

    Example::

        skips = SkipCounter()
        for batch in loader:
            skips.update(batch)
            ...
        print(skips.summary())  # skipped 2 unreadable files (first: /data/a.png, /data/b.jpg)
    """

    def __init__(self, max_warnings: int = 10) -> None:
        self.max_warnings = max_warnings
        self._paths: dict[str, None] = {}  # insertion-ordered set
        self.total = 0

    def update(self, batch_or_paths: Mapping[str, Any] | Iterable[str]) -> int:
        """Record the skipped paths of a collated batch (or an iterable of paths).

        Returns the number of paths recorded from this call.
        """
        if isinstance(batch_or_paths, Mapping):
            paths = list(batch_or_paths.get("skipped", ()))
        else:
            paths = list(batch_or_paths)
        for path in paths:
            path = str(path)
            if path not in self._paths:
                self._paths[path] = None
                if len(self._paths) <= self.max_warnings:
                    logger.warning("skipping unreadable image file: %s", path)
        self.total += len(paths)
        return len(paths)

    @property
    def count(self) -> int:
        """Number of distinct files skipped so far."""
        return len(self._paths)

    @property
    def paths(self) -> list[str]:
        """All distinct skipped paths, in the order they were first seen."""
        return list(self._paths)

    def first(self, n: int) -> list[str]:
        """The first ``n`` distinct skipped paths."""
        return self.paths[: max(n, 0)]

    def summary(self, n: int = 5) -> str:
        """One line for a log, e.g. ``"skipped 2 unreadable files (first: a.png, b.jpg)"``."""
        noun = "file" if self.count == 1 else "files"
        if self.count == 0:
            return f"skipped 0 unreadable {noun}"
        return f"skipped {self.count} unreadable {noun} (first: {', '.join(self.first(n))})"

    def state_dict(self) -> dict[str, Any]:
        return {"paths": self.paths, "total": self.total}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._paths = dict.fromkeys(str(p) for p in state["paths"])
        self.total = int(state["total"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(count={self.count}, total={self.total})"


# --------------------------------------------------------------------------------------------
# Sampler
# --------------------------------------------------------------------------------------------


class ResumableSampler(Sampler[int]):
    """A shuffling, sharding sampler that can resume in the middle of an epoch.

    Every epoch, the indices ``0 .. num_samples - 1`` are permuted with a generator seeded by
    ``(seed, epoch)`` (identity order when ``shuffle=False``) and made divisible by
    ``world_size``: the tail is dropped (``drop_last=True``) or the permutation is padded by
    repeating its start (``drop_last=False``, as ``DistributedSampler`` does). Rank ``r``
    takes ``perm[r::world_size]``, so ranks get disjoint shards of equal length.

    Resuming: a DataLoader prefetches, so iterating this sampler does not mean the samples
    were trained on. The training loop reports what it consumed with :meth:`advance` (use a
    collated batch's ``num_samples``, which counts skipped files too); :meth:`state_dict`
    stores ``epoch`` and ``position`` and :meth:`load_state_dict` restores them, after which
    iteration yields exactly the samples this rank had not consumed. ``len()`` is the number
    of samples left in the current epoch for this rank.

    :meth:`set_epoch` with a *new* epoch resets ``position`` to 0; with the current epoch it
    keeps it, so the usual ``for epoch in range(start, end): sampler.set_epoch(epoch)`` loop
    works unchanged after ``load_state_dict``.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if drop_last and num_samples < world_size:
            raise ValueError(
                f"num_samples ({num_samples}) < world_size ({world_size}) with drop_last=True "
                "leaves every rank without samples"
            )
        self.num_samples = int(num_samples)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.position = 0

    @property
    def samples_per_rank(self) -> int:
        """Samples each rank sees in a full epoch."""
        if self.drop_last:
            return self.num_samples // self.world_size
        return math.ceil(self.num_samples / self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; a different epoch than the current one restarts at position 0."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self.position = 0

    def advance(self, n: int) -> None:
        """Record that ``n`` more samples of this epoch were consumed by this rank."""
        if n < 0 or self.position + n > self.samples_per_rank:
            raise ValueError(
                f"cannot advance by {n}: position {self.position} of {self.samples_per_rank} in epoch {self.epoch}"
            )
        self.position += int(n)

    def epoch_indices(self, epoch: int | None = None) -> list[int]:
        """This rank's full shard of ``epoch`` (default: the current one), ignoring position."""
        epoch = self.epoch if epoch is None else epoch
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        total = self.samples_per_rank * self.world_size
        if total <= len(order):
            order = order[:total]
        else:  # pad by wrapping around (may repeat more than once for tiny datasets)
            order = (order * math.ceil(total / len(order)))[:total]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.position :])

    def __len__(self) -> int:
        return self.samples_per_rank - self.position

    _CONFIG_KEYS = ("num_samples", "world_size", "seed", "shuffle", "drop_last")

    def state_dict(self) -> dict[str, Any]:
        state = {key: getattr(self, key) for key in self._CONFIG_KEYS}
        state.update(epoch=self.epoch, position=self.position, rank=self.rank)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``epoch`` and ``position``; the configuration must be the one that produced the
        state (another world size, seed or data set size could not reproduce the remaining samples)."""
        changed = [
            f"{key}: {state[key]!r} -> {getattr(self, key)!r}"
            for key in self._CONFIG_KEYS
            if key in state and state[key] != getattr(self, key)
        ]
        if changed:
            raise ValueError(f"cannot resume with a different sampler configuration ({'; '.join(changed)})")
        position = int(state["position"])
        if position > self.samples_per_rank:
            raise ValueError(f"position {position} exceeds samples_per_rank {self.samples_per_rank}")
        self.epoch, self.position = int(state["epoch"]), position

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_samples={self.num_samples}, rank={self.rank}, "
            f"world_size={self.world_size}, seed={self.seed}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last}, epoch={self.epoch}, position={self.position})"
        )
