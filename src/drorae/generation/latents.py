"""What stage 2 reads: labelled images, a tokenizer's exact latent statistics, cached latents.

* :class:`LabeledImageFolder`: ``root/<class>/<image>``, classes sorted by name (index = position), ADM centre
  crop at the decoder's resolution (RAE's stage-2 transform), an optional flip drawn from ``(seed, epoch, index)``.
* :class:`LatentMoments`: per-position mean and variance of latents ``[C, h, w]``, streamed in float64 with the
  parallel (Chan et al.) update, mergeable across ranks in rank order: the result equals a one-pass
  computation over the whole set (RAE's momentum average does not).
* :func:`compute_latent_stats` (``drorae stats``) and :func:`cache_latents` (``drorae cache-latents``), both
  ``torchrun``-capable; a cache is a folder of safetensors shards (latents, labels, dataset indices) plus
  ``meta.json``, each shard written atomically, so an interrupted run resumes at the first missing shard.
* :class:`LatentDataset` reads a cache lazily (one row at a time from memory-mapped shards).
* :class:`FlowMatchingSamples` adds each sample's training randomness (noise, time, label dropout), drawn from
  ``(seed, epoch, index)`` in the DataLoader workers: a step's numbers do not depend on the batch split,
  gradient accumulation, the number of ranks or a resume.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data.adm import adm_item
from ..data.folders import EpochSeededDataset, derive_seed, list_images, sample_generator
from ..serialization import read_json, save_safetensors
from ..tokenizer.interface import latent_fingerprint

STATS_NAME = "latent_stats.safetensors"
META_NAME = "meta.json"
STATS_EPS = 1e-5  # RAE: (z - mean) / sqrt(var + 1e-5)


# -- labelled images --------------------------------------------------------------------------------------------


def list_classes(root: str | Path, labels: bool = True) -> tuple[list[str], list[Path], list[int]]:
    """``(class names, image paths, labels)`` of a ``root/<class>/...`` folder; classes sorted by name.
    ``labels=False``: every image at any depth (or in the shards), all labelled 0 and no class names (what
    ``drorae stats`` reads, so that a caption folder or caption shards can be measured too)."""
    from ..data.shards import index_shards, is_shard_spec

    if not labels:
        members = index_shards(root)[0] if is_shard_spec(root) else list_images(Path(root))
        return [], members, [0] * len(members)
    if is_shard_spec(root):
        members, labels, names = index_shards(root)
        if any(y is None for y in labels):
            raise ValueError(f"{root}: shards without class labels (.cls members); shard a folder of class sub-folders")
        return names or [str(i) for i in range(max(labels) + 1)], members, labels
    root = Path(root)
    paths = list_images(root)
    loose = [p for p in paths if p.parent == root]
    if loose:
        raise ValueError(
            f"{root} holds {len(loose)} images directly (e.g. {loose[0].name}); class-conditional training needs "
            "one sub-folder per class (root/<class>/<image>)"
        )
    classes = sorted({p.relative_to(root).parts[0] for p in paths})
    index = {name: i for i, name in enumerate(classes)}
    return classes, paths, [index[p.relative_to(root).parts[0]] for p in paths]


class LabeledImageFolder(EpochSeededDataset):
    """ADM-centre-cropped images in ``[0, 1]`` with class labels; items ``{"image", "label", "index"}``, or
    ``{"image": None, "skipped": path}`` for a file that cannot be decoded (counted by the trainer)."""

    def __init__(
        self, root: str | Path, image_size: int, random_flip: bool = False, seed: int = 0, labels: bool = True
    ):
        super().__init__()
        self.root = Path(root)
        self.classes, self.paths, self.labels = list_classes(root, labels)
        self.image_size, self.random_flip, self.seed = image_size, random_flip, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = adm_item(self.paths[index], index, self.image_size)
        if item["image"] is None:
            return item
        x = item["image"].float() / 255.0
        if self.random_flip and torch.rand((), generator=sample_generator(self.seed, self.epoch, index)) < 0.5:
            x = x.flip(-1)
        return {"image": x, "label": self.labels[index], "index": index}


_BATCH_KEYS = {"image": "images", "label": "labels", "latent": "latents"}


def collate_samples(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack every field of the readable samples (``image`` -> ``images``, ``label`` -> ``labels``, ...);
    keep the skipped paths and the number drawn (``num_samples``) for the skip accounting and the sampler."""
    good = [s for s in batch if s.get("image", 0) is not None]
    out: dict[str, Any] = {
        "skipped": [str(s["skipped"]) for s in batch if s.get("image", 0) is None],
        "num_samples": len(batch),
        "indices": torch.tensor([int(s["index"]) for s in good], dtype=torch.long),
    }
    for key in good[0] if good else ():
        if key == "index":
            continue
        values = [s[key] for s in good]
        out[_BATCH_KEYS.get(key, key)] = torch.stack(values) if isinstance(values[0], Tensor) else torch.tensor(values)
    return out


# -- exact moments --------------------------------------------------------------------------------------------


class LatentMoments:
    """Streaming per-position mean and centred second moment of ``[B, *shape]`` batches (float64)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def update(self, x: Tensor) -> None:
        if x.shape[0] == 0:
            return
        x = x.detach().double()
        self.merge_moments(x.shape[0], x.mean(0), (x - x.mean(0)).pow(2).sum(0))

    def merge_moments(self, n_b: int, mean_b: Tensor, m2_b: Tensor) -> None:
        if n_b == 0:
            return
        if self.mean is None:
            self.count, self.mean, self.m2 = n_b, mean_b.clone(), m2_b.clone()
            return
        mean_b, m2_b = mean_b.to(self.mean.device), m2_b.to(self.mean.device)
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta.pow(2) * (self.count * n_b / n)
        self.count = n

    def merge(self, other: LatentMoments) -> None:
        if other.count:
            self.merge_moments(other.count, other.mean, other.m2)

    @property
    def var(self) -> Tensor:
        """Population variance (divides by the count), what normalisation uses."""
        if self.mean is None:
            raise RuntimeError("no latents were accumulated")
        return self.m2 / self.count

    def state(self) -> dict[str, Tensor]:
        return {"count": torch.tensor(self.count), "mean": self.mean.cpu(), "m2": self.m2.cpu()}

    @classmethod
    def from_state(cls, state: Mapping[str, Tensor]) -> LatentMoments:
        m = cls()
        m.merge_moments(int(state["count"]), state["mean"].double(), state["m2"].double())
        return m


def raw_latents(tokenizer, images: Tensor) -> Tensor:
    """The tokenizer's latent ``[B, C, h, w]`` *before* its normalisation (fusion as configured)."""
    return tokenizer.raw_latents(images)


def stats_fingerprint(tokenizer) -> str:
    """A short hash of how a tokenizer turns images into latents (:meth:`Tokenizer.fingerprint
    <drorae.tokenizer.interface.Tokenizer.fingerprint>`), so a latent cache or a DiT trained on one latent is not
    used with another."""
    return tokenizer.fingerprint()


def _progress(items, desc: str, show: bool):
    if not show:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc)


def _loader(dataset, indices, batch_size: int, num_workers: int):
    return torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, list(indices)),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_samples,
    )


@torch.no_grad()
def compute_latent_stats(
    model_dir: str | Path,
    data_dir: str | Path,
    *,
    out_dir: str | Path | None = None,
    fusion: bool | None = None,
    flip: bool = False,
    batch_size: int = 64,
    num_workers: int = 2,
    device: str = "auto",
    progress: bool | None = None,
    sample_posterior: bool = False,
    image_size: int | None = None,
) -> dict[str, Any]:
    """``drorae stats``: exact per-position mean/var of the tokenizer's (un-normalised) latents over a folder
    of images at any depth (class sub-folders or not) or shards; labels are not read.

    Ranks of a ``torchrun`` job take interleaved slices and their moments are merged in rank order. The result
    is stored with the tokenizer (``latent_stats.safetensors``: mean, var, count; and as its normalisation
    ``(z - mean) / sqrt(var + 1e-5)``), in ``model_dir`` itself or in a copy at ``out_dir``.
    ``flip`` adds every image's mirror image (RAE's training transform flips). A diffusers VAE stores per-channel
    statistics instead (:meth:`~drorae.tokenizer.vae.DiffusersVAETokenizer.store_latent_stats`).
    """
    from ..engine.distributed import setup_distributed
    from ..hub import is_hub_id
    from ..tokenizer.factory import load_tokenizer, tokenizer_class

    if out_dir is None and is_hub_id(model_dir):
        raise ValueError(
            f"{model_dir} is a Hub id, whose cached snapshot is not rewritten in place: give --out DIR for a copy "
            "of the tokenizer with the statistics"
        )
    dist = setup_distributed(device)
    model_dir = tokenizer_class(model_dir)[1]
    tokenizer = load_tokenizer(
        model_dir, map_location=dist.device, fusion=fusion, sample_posterior=sample_posterior, image_size=image_size
    )
    dataset = LabeledImageFolder(data_dir, tokenizer.image_size, labels=False)  # labels unused
    moments, skipped = LatentMoments(), []
    show = (sys.stderr.isatty() if progress is None else progress) and dist.is_main
    loader = _loader(dataset, range(dist.rank, len(dataset), dist.world_size), batch_size, num_workers)
    for batch in _progress(loader, "latent stats", show):
        skipped += batch["skipped"]
        if "images" not in batch:
            continue
        x = batch["images"].to(dist.device)
        moments.update(raw_latents(tokenizer, x))
        if flip:
            moments.update(raw_latents(tokenizer, x.flip(-1)))
    merged = LatentMoments()
    for state in dist.gather(moments.state() if moments.count else None):
        if state is not None:
            merged.merge(LatentMoments.from_state(state))
    skipped = sum(dist.gather(skipped), [])
    result = None
    if dist.is_main:
        if merged.count == 0:
            raise ValueError(f"no readable images under {data_dir} ({len(skipped)} skipped)")
        if hasattr(tokenizer, "store_latent_stats"):  # a VAE: per-channel statistics beside its weights
            result = tokenizer.store_latent_stats(merged.mean, merged.var, merged.count, model_dir, out_dir)
        else:
            result = store_latent_stats(tokenizer, model_dir, merged, out_dir)
        result.update(images=len(dataset) - len(skipped), skipped_files=len(skipped), flip=flip, data=str(data_dir))
        result.update(sample_posterior=sample_posterior)
        target = Path(out_dir) if out_dir else model_dir
        (target / "latent_stats.json").write_text(json.dumps(result, indent=2) + "\n")
    dist.barrier()
    dist.shutdown()
    return result


def store_latent_stats(tokenizer, model_dir: Path, moments: LatentMoments, out_dir: str | Path | None) -> dict:
    """Set the tokenizer's normalisation from ``moments`` and write it: in place (only ``config.json`` and
    ``model.safetensors`` are rewritten, each atomically; the backbone files are left alone) or as a copy."""
    from ..tokenizer.model import CONFIG_NAME, WEIGHTS_NAME

    mean, var = moments.mean.float(), moments.var.float()
    tokenizer.set_latent_stats(mean, torch.sqrt(var + STATS_EPS), eps=0.0)
    if out_dir is not None and Path(out_dir).resolve() != model_dir.resolve():
        target = Path(out_dir)
        tokenizer.save_pretrained(target)
    else:
        target = model_dir
        raw = json.loads((model_dir / CONFIG_NAME).read_text())
        config = tokenizer.config.to_dict()
        config["backbone"] = raw["backbone"]  # keep the stored reference (e.g. "backbone") as it was
        config.update({k: raw[k] for k in ("_backbone_id",) if k in raw})  # and the model card's backbone id
        tensors = {k: v for k, v in tokenizer.state_dict().items() if not k.startswith("backbone.")}
        save_safetensors(tensors, model_dir / WEIGHTS_NAME)
        tmp = model_dir / (CONFIG_NAME + ".tmp")
        tmp.write_text(json.dumps(config, indent=2) + "\n")
        tmp.replace(model_dir / CONFIG_NAME)
    save_safetensors(
        {"mean": mean, "var": var, "count": torch.tensor(moments.count)},
        target / STATS_NAME,
        metadata={"eps": str(STATS_EPS), "fusion_enabled": str(tokenizer.fusion_enabled)},
    )
    return {
        "model": str(target),
        "count": moments.count,
        "shape": list(mean.shape),
        "mean_of_mean": float(mean.mean()),
        "mean_of_var": float(var.mean()),
        "fusion_enabled": tokenizer.fusion_enabled,
        "fingerprint": stats_fingerprint(tokenizer),
    }


# -- latent caches --------------------------------------------------------------------------------------------


def _shard_file(out: Path, k: int) -> Path:
    return out / f"shard_{k:05d}.safetensors"


@torch.no_grad()
def cache_latents(
    model_dir: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    flip: bool = False,
    captions: bool = False,
    shard_size: int = 4096,
    batch_size: int = 64,
    dtype: str = "float32",
    num_workers: int = 2,
    device: str = "auto",
    progress: bool | None = None,
    sample_posterior: bool = False,
    image_size: int | None = None,
    seed: int = 0,
) -> dict[str, Any] | None:
    """``drorae cache-latents``: the tokenizer's ``encode`` (normalised, as training sees it) of every image,
    with its label, in shards of ``shard_size`` images; ``flip`` also stores the latent of the mirror image
    (``latents_flipped``), which training then picks with probability 1/2. ``captions``: ``data_dir`` is a caption
    set (a folder of ``name.jpg`` + ``name.txt`` or caption shards) and row ``indices`` are its pair indices, for
    ``train-t2i --latents`` (which reads the captions from the same set). ``sample_posterior``: a VAE's latents are
    draws from its posterior (seeded by ``seed`` and the shard), not its mean. Returns ``meta.json`` on rank 0."""
    from ..engine.distributed import setup_distributed
    from ..tokenizer.factory import load_tokenizer

    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"--dtype {dtype!r} is not float32, bfloat16 or float16")
    dist = setup_distributed(device)
    out = Path(out_dir)
    tokenizer = load_tokenizer(
        model_dir, map_location=dist.device, sample_posterior=sample_posterior, image_size=image_size
    )
    size = tokenizer.image_size
    if captions:
        from ..data.captions import CaptionedImages

        dataset = CaptionedImages(data_dir, size)
    else:
        dataset = LabeledImageFolder(data_dir, size)
    num_shards = math.ceil(len(dataset) / shard_size)
    out.mkdir(parents=True, exist_ok=True)
    pending = [k for k in range(dist.rank, num_shards, dist.world_size) if not _shard_file(out, k).is_file()]
    show = (sys.stderr.isatty() if progress is None else progress) and dist.is_main
    store = getattr(torch, dtype)
    for k in _progress(pending, "latent shards", show):
        if sample_posterior:  # a shard's draws depend on (seed, shard) only: a resumed cache equals an unbroken one
            tokenizer.generator = torch.Generator(dist.device).manual_seed(derive_seed(seed, 3, k))
        parts: dict[str, list[Tensor]] = {}
        skipped: list[str] = []
        for batch in _loader(
            dataset, range(k * shard_size, min((k + 1) * shard_size, len(dataset))), batch_size, num_workers
        ):
            skipped += batch["skipped"]
            if "images" not in batch:
                continue
            x = batch["images"].to(dist.device)
            rows = {"latents": tokenizer.encode(x), "labels": batch["labels"], "indices": batch["indices"]}
            if flip:
                rows["latents_flipped"] = tokenizer.encode(x.flip(-1))
            for key, value in rows.items():
                parts.setdefault(key, []).append(value.to(store).cpu() if value.is_floating_point() else value.cpu())
        _shard_file(out, k).with_suffix(".json").write_text(json.dumps({"skipped": skipped}))
        tensors = {key: torch.cat(v) for key, v in parts.items()}
        if not tensors:  # a shard of unreadable files: an empty shard keeps the numbering
            tensors = {"labels": torch.zeros(0, dtype=torch.long), "indices": torch.zeros(0, dtype=torch.long)}
        save_safetensors(tensors, _shard_file(out, k))  # last: its presence marks the shard done
    dist.barrier()
    meta = None
    if dist.is_main:
        counts, skipped = [], 0
        for k in range(num_shards):
            counts.append(_shard_rows(_shard_file(out, k)))
            skipped += len(json.loads(_shard_file(out, k).with_suffix(".json").read_text())["skipped"])
        info = tokenizer.latent_info()
        meta = {
            "classes": dataset.classes,
            "num_latents": sum(counts),
            "shard_rows": counts,
            "latent_shape": list(tokenizer.latent_shape),
            "image_size": tokenizer.image_size,
            "dtype": dtype,
            "flip": flip,
            "skipped_files": skipped,
            "tokenizer": str(model_dir),
            "fingerprint": stats_fingerprint(tokenizer),
            "fusion_enabled": info["fusion_enabled"],
            "latent_norm": info["latent_norm"],
            "tokenizer_kind": info["kind"],
            "sample_posterior": sample_posterior,
            "data": str(data_dir),
            "captions": captions,
            "num_images": len(dataset),  # the pairs of a caption set: what train-t2i checks its --data against
        }
        (out / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    dist.barrier()
    dist.shutdown()
    return meta


def _shard_rows(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.get_slice("labels").get_shape()[0]


class LatentDataset(EpochSeededDataset):
    """A ``cache-latents`` folder as a dataset: items ``{"latent", "label", "index"}``, read row by row from
    memory-mapped shards (a 1.28M-image cache never has to fit in memory). With a flipped copy in the cache and
    ``random_flip``, each item is the original or the mirror image's latent, drawn from ``(seed, epoch, index)``."""

    def __init__(self, root: str | Path, random_flip: bool = True, seed: int = 0):
        super().__init__()
        self.root = Path(root)
        meta_path = self.root / META_NAME
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: run `drorae cache-latents ... --out {root}` to completion")
        self.meta = read_json(meta_path, "a latent cache's meta.json")
        self.classes = self.meta["classes"]
        self.files = [_shard_file(self.root, k) for k in range(len(self.meta["shard_rows"]))]
        self.offsets = [0]
        for rows in self.meta["shard_rows"]:
            self.offsets.append(self.offsets[-1] + rows)
        self.use_flip = bool(random_flip and self.meta["flip"])
        self.seed = seed
        self._handles: dict[int, Any] = {}
        self._pid = None

    def __len__(self) -> int:
        return self.offsets[-1]

    def source_index(self, index: int) -> int:
        """The index in the cached image set of row ``index`` (they differ after skipped images)."""
        k = bisect.bisect_right(self.offsets, index) - 1
        return int(self._handle(k).get_slice("indices")[index - self.offsets[k] : index - self.offsets[k] + 1][0])

    def _handle(self, k: int):
        from safetensors import safe_open

        if self._pid != os.getpid():  # a DataLoader worker opens its own handles
            self._handles, self._pid = {}, os.getpid()
        if k not in self._handles:
            self._handles[k] = safe_open(str(self.files[k]), framework="pt")
        return self._handles[k]

    def __getitem__(self, index: int) -> dict[str, Any]:
        k = bisect.bisect_right(self.offsets, index) - 1
        row = index - self.offsets[k]
        f = self._handle(k)
        key = "latents"
        if self.use_flip and torch.rand((), generator=sample_generator(self.seed, self.epoch, index)) < 0.5:
            key = "latents_flipped"
        latent = f.get_slice(key)[row : row + 1][0].float()
        label = int(f.get_slice("labels")[row : row + 1][0])
        return {"latent": latent, "label": label, "index": index}

    def __getstate__(self):  # handles are per process
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = {}, None
        return state


class FlowMatchingSamples(EpochSeededDataset):
    """``base``'s items plus their flow-matching randomness: ``noise`` (latent-shaped N(0, 1)), ``u`` (a uniform
    that becomes the training time) and ``drop`` (label replaced by the null class with ``label_dropout``)."""

    def __init__(self, base, latent_shape: Sequence[int], label_dropout: float, seed: int):
        super().__init__()
        self.base, self.latent_shape, self.label_dropout = base, tuple(latent_shape), label_dropout
        self.seed = derive_seed(seed, 2)  # independent of the base's flip draws
        self.classes = getattr(base, "classes", None)  # caption data (text-to-image) has none

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.base[index]
        if item.get("image", 0) is None:
            return item
        g = sample_generator(self.seed, self.epoch, index)
        item["noise"] = torch.randn(self.latent_shape, generator=g)
        item["u"] = torch.rand((), generator=g).clamp(1e-6, 1 - 1e-6)
        item["drop"] = bool(torch.rand((), generator=g) < self.label_dropout)
        return item


__all__ = [
    "FlowMatchingSamples",
    "LabeledImageFolder",
    "LatentDataset",
    "LatentMoments",
    "cache_latents",
    "collate_samples",
    "compute_latent_stats",
    "latent_fingerprint",
    "list_classes",
    "raw_latents",
    "stats_fingerprint",
]
