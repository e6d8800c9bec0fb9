"""A small ViT backbone pretrained offline, for the demo.

DRoRAE's premise is that the LAST layer of a semantically pretrained ViT has lost pixel
detail that shallower layers still hold. No pretrained weights can be downloaded offline, and
a random-init ViT keeps most detail in every layer, so the demo first pretrains a tiny
``Dinov2WithRegisters`` itself, with an objective that rewards invariance:

    classify WHICH training photo a crop came from, from the CLS output, under strong
    augmentation (scale jitter, flips, colour jitter, channel permutation, grayscale, blur).

To solve it the network must discard what the augmentations change (exact colours, fine
texture, position) and keep what identifies a photo, so its deep blocks lose detail the way
semantic pretraining does; a linear pixel probe (:func:`drorae.studies.analysis.probe_backbone`)
shows it (:func:`probe_demo_backbones`).

- :class:`BackboneRecipe`: architecture, objective, hyper-parameters and seed; JSON-serialisable,
  :meth:`~BackboneRecipe.key` is a short hash naming its cache entry.
- :func:`pretrain_backbone`: trains on the TRAIN photos only (never the held-out ones) for a
  fixed number of steps, deterministically given the seed, and writes a ``save_pretrained``
  directory that :func:`drorae.load_backbone` reads, plus ``recipe.json`` and
  ``pretrain_stats.json``.
- :func:`cached_backbone`: the directory of a recipe's backbone, trained once and cached
  (atomically: an interrupted run never leaves a half-written entry).
- :func:`init_backbone`: the same architecture at its random initialisation (the pretraining's
  starting point), the control that shows what pretraining changed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from ..data.folders import derive_seed, pil_to_tensor
from ..engine.schedule import warmup_cosine_lr
from ..tokenizer.backbones import IMAGENET_MEAN, IMAGENET_STD
from . import photos as sample_photos

__all__ = [
    "BackboneRecipe",
    "RECIPE_FILE",
    "STATS_FILE",
    "augment_batch",
    "cached_backbone",
    "default_cache_dir",
    "init_backbone",
    "pretrain_backbone",
    "probe_demo_backbones",
    "sample_batch",
]

RECIPE_FILE = "recipe.json"
STATS_FILE = "pretrain_stats.json"
#: Bumped when the training code changes what a recipe produces, so old cache entries are
#: not reused (the version is part of :meth:`BackboneRecipe.key`).
_TRAINER_VERSION = 2  # 2: the learning rate comes from drorae.engine.schedule (last-bit differences)
#: What the classification head reads: the CLS token, the mean patch token, or both concatenated.
_POOLS = ("cls", "mean", "cls+mean")


@dataclass(frozen=True)
class BackboneRecipe:
    """Everything that determines a pretrained demo backbone.

    Architecture (a ``transformers`` ``Dinov2WithRegistersConfig``): ``hidden_size``,
    ``num_layers``, ``num_heads``, ``mlp_ratio``, ``patch_size``, ``num_register_tokens``,
    ``image_size`` (= the pretraining crop size; the backbone accepts other multiples of the
    patch, its position embeddings interpolate). Width 192 and cheaper 32 / 48 px recipes
    were tried: see docs/demo-tuning-history.md.

    Objective: classify which training photo a crop came from, from ``pool`` (default the CLS
    output of the final, affine LayerNorm; ``"mean"``: the mean patch token, ``"cls+mean"``:
    both) through a linear head that is thrown away afterwards. The two
    stereo views of the motorcycle are one class (they are near-duplicates). Crops are
    ``image_size * s`` windows, ``s`` log-uniform in ``scale``, resized to ``image_size``;
    then, per image: horizontal flip (p=1/2), brightness / contrast / saturation factors
    uniform in ``1 +- jitter``, channel permutation (``channel_perm_p``), grayscale
    (``grayscale_p``), Gaussian blur with sigma uniform in ``blur_sigma`` (``blur_p``).

    Optimisation: AdamW (``lr``, ``weight_decay``, betas 0.9/0.999), linear warm-up over
    ``warmup_steps`` then cosine decay to ``lr * min_lr_ratio`` at ``steps``, gradient-norm
    clipping at ``grad_clip``, batch ``batch_size``. The budget is a number of steps, not a
    time, so a recipe gives the same weights wherever it runs with the same torch build, CPU
    kind and thread count (elsewhere: the same up to floating-point rounding).
    """

    # architecture
    hidden_size: int = 128  # 192 lost more detail but cost twice the pretraining (docs/demo-tuning-history.md)
    num_layers: int = 6
    num_heads: int = 2
    mlp_ratio: int = 4
    patch_size: int = 8
    num_register_tokens: int = 4
    image_size: int = 64
    # objective and augmentation
    scale: tuple[float, float] = (0.35, 2.5)
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    channel_perm_p: float = 0.2
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    pool: str = "cls"
    # optimisation
    steps: int = 500
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 25
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        # Lists from JSON become tuples, so equal recipes compare (and hash) equal.
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        object.__setattr__(self, "blur_sigma", tuple(float(v) for v in self.blur_sigma))
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.steps <= 0 or self.batch_size <= 0:
            raise ValueError(f"steps and batch_size must be positive, got {self.steps}, {self.batch_size}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must satisfy 0 < low <= high, got {self.scale}")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < low <= high, got {self.blur_sigma}")
        if self.pool not in _POOLS:
            raise ValueError(f"pool must be one of {_POOLS}, got {self.pool!r}")
        for name in ("channel_perm_p", "grayscale_p", "blur_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")

    @classmethod
    def quick(cls, **overrides: Any) -> BackboneRecipe:
        """A tiny recipe for tests and ``--quick`` runs: a few seconds. Far too short to make
        deep layers lose detail; it checks the plumbing, not the effect."""
        base = dict(
            hidden_size=64,
            num_layers=3,
            num_heads=1,
            patch_size=8,
            image_size=32,
            steps=30,
            batch_size=16,
            lr=1e-3,
            warmup_steps=3,
        )
        return cls(**{**base, **overrides})

    # -- serialisation --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scale"], d["blur_sigma"] = list(self.scale), list(self.blur_sigma)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackboneRecipe:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown BackboneRecipe fields: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> BackboneRecipe:
        return cls.from_dict(json.loads(text))

    def key(self) -> str:
        """A short stable hash of the recipe (and of the trainer version): its cache name."""
        payload = json.dumps({"trainer": _TRAINER_VERSION, "recipe": self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def replace(self, **changes: Any) -> BackboneRecipe:
        return replace(self, **changes)

    # -- model ----------------------------------------------------------------------------------

    def model_config(self):
        from transformers import Dinov2WithRegistersConfig

        return Dinov2WithRegistersConfig(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            patch_size=self.patch_size,
            num_register_tokens=self.num_register_tokens,
            image_size=self.image_size,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            drop_path_rate=0.0,
        )


# ------------------------------------------------------------------------------------------------
# Data: labelled crops of the training photos, augmented on the batch
# ------------------------------------------------------------------------------------------------


def _photo_classes(names: list[str]) -> list[int]:
    """Class index per photo; photos read by the same ``skimage.data`` loader (the two stereo
    views) share a class, as they are near-duplicates that no augmentation-invariant model
    could tell apart."""
    groups: dict[str, int] = {}
    out = []
    for name in names:
        source = sample_photos.PHOTO_SOURCES.get(name)
        group = source.loader if source is not None else name
        out.append(groups.setdefault(group, len(groups)))
    return out


def sample_batch(
    images: list[Image.Image], classes: list[int], recipe: BackboneRecipe, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``batch_size`` scale-jittered crops ``[B, 3, S, S]`` in ``[0, 1]`` and their class labels.

    A photo is drawn uniformly, then a window of side ``S * s`` (``s`` log-uniform in
    ``recipe.scale``, shrunk to fit the photo) at a uniform position, resized to ``S``
    (bicubic; Pillow antialiases when downscaling).
    """
    crops, labels = [], []
    for _ in range(recipe.batch_size):
        photo = int(torch.randint(len(images), (1,), generator=generator))
        u = torch.rand(3, generator=generator).tolist()
        window = sample_photos.crop_window(images[photo], recipe.image_size, recipe.scale, u[0], u[1], u[2])
        crops.append(pil_to_tensor(window))
        labels.append(classes[photo])
    return torch.stack(crops), torch.tensor(labels, dtype=torch.long)


def _gray(x: Tensor) -> Tensor:
    """ITU-R 601 luma ``[B, 1, H, W]``."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, math.ceil(3.0 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    padded = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def augment_batch(images: Tensor, recipe: BackboneRecipe, generator: torch.Generator) -> Tensor:
    """The recipe's photometric and flip augmentations, per image, from ``generator``.

    Every random draw is made for every image whether or not it is used, so the stream of
    draws (and thus the whole run) does not depend on earlier outcomes.
    """
    b = images.shape[0]
    g = generator
    flip = torch.rand(b, generator=g) < 0.5
    factors = 1.0 + (2.0 * torch.rand(b, 3, generator=g) - 1.0) * torch.tensor(
        [recipe.brightness, recipe.contrast, recipe.saturation]
    )
    order = torch.stack([torch.randperm(3, generator=g) for _ in range(b)])  # colour-op order
    perm_apply = torch.rand(b, generator=g) < recipe.channel_perm_p
    perms = torch.stack([torch.randperm(3, generator=g) for _ in range(b)])
    gray_apply = torch.rand(b, generator=g) < recipe.grayscale_p
    blur_apply = torch.rand(b, generator=g) < recipe.blur_p
    lo, hi = recipe.blur_sigma
    sigmas = lo + (hi - lo) * torch.rand(b, generator=g)

    x = torch.where(flip.view(b, 1, 1, 1), images.flip(-1), images)
    out = []
    for i in range(b):
        xi = x[i : i + 1]
        for op in order[i].tolist():  # colour jitter in a random order, like torchvision's
            f = float(factors[i, op])
            if op == 0:  # brightness
                xi = (xi * f).clamp(0, 1)
            elif op == 1:  # contrast around the mean luma
                m = _gray(xi).mean()
                xi = ((xi - m) * f + m).clamp(0, 1)
            else:  # saturation around the per-pixel luma
                luma = _gray(xi)
                xi = ((xi - luma) * f + luma).clamp(0, 1)
        if perm_apply[i]:
            xi = xi[:, perms[i]]
        if gray_apply[i]:
            xi = _gray(xi).expand(-1, 3, -1, -1)
        if blur_apply[i]:
            xi = _gaussian_blur(xi, float(sigmas[i]))
        out.append(xi)
    return torch.cat(out).contiguous()


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------


def _new_model(recipe: BackboneRecipe) -> nn.Module:
    """The recipe's ``Dinov2WithRegistersModel`` at its seeded random initialisation."""
    from transformers import Dinov2WithRegistersModel

    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        torch.manual_seed(derive_seed(recipe.seed, 0))
        return Dinov2WithRegistersModel(recipe.model_config())


def init_backbone(recipe: BackboneRecipe, out_dir: str | os.PathLike) -> Path:
    """Save the recipe's architecture at its random initialisation (the exact starting point
    of :func:`pretrain_backbone`): the control a layer probe compares against."""
    out_dir = Path(out_dir)
    _new_model(recipe).save_pretrained(out_dir)
    (out_dir / RECIPE_FILE).write_text(json.dumps(recipe.to_dict(), indent=2, sort_keys=True) + "\n")
    return out_dir


def _pooled(tokens: Tensor, recipe: BackboneRecipe) -> Tensor:
    """The head's input from the final-LayerNorm tokens ``[B, 1 + R + N, C]``."""
    cls = tokens[:, 0]
    patches = tokens[:, 1 + recipe.num_register_tokens :].mean(1)
    return {"cls": cls, "mean": patches, "cls+mean": torch.cat([cls, patches], -1)}[recipe.pool]


# ------------------------------------------------------------------------------------------------
# Pretraining
# ------------------------------------------------------------------------------------------------


def pretrain_backbone(recipe: BackboneRecipe, out_dir: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    """Pretrain the recipe's backbone on the TRAIN sample photos and save it to ``out_dir``.

    Writes ``Dinov2WithRegistersModel.save_pretrained(out_dir)`` (the classification head is
    dropped), ``recipe.json`` and ``pretrain_stats.json``. Deterministic given the recipe
    (seeded initialisation, one generator for all data draws) on a given torch build and
    thread count. Held-out photos are never loaded.

    Returns the stats: ``seconds``, ``steps``, ``final_train_accuracy`` and ``final_loss``
    (means over the last 10% of steps, on augmented training batches), ``photos`` (the names
    trained on), ``num_classes``, ``recipe_key``.
    """
    out_dir = Path(out_dir)
    photos = sample_photos.load_photos("train")
    names = list(photos)
    leaked = set(names) & set(sample_photos.HELDOUT_PHOTOS)
    if leaked:  # a guard against an edit of the splits, not a reachable path today
        raise RuntimeError(f"held-out photos {sorted(leaked)} are in the training split")
    images = [Image.fromarray(np.asarray(photos[n])) for n in names]
    classes = _photo_classes(names)
    num_classes = max(classes) + 1

    model = _new_model(recipe)
    model.train()
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream alone
        head = nn.Linear(recipe.hidden_size * (2 if recipe.pool == "cls+mean" else 1), num_classes)
    with torch.no_grad():  # a zero head starts at exactly the chance-level loss
        head.weight.zero_()
        head.bias.zero_()
    params = list(model.parameters()) + list(head.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
        betas=(0.9, 0.999),
    )
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    generator = torch.Generator().manual_seed(derive_seed(recipe.seed, 1))

    tail = max(1, recipe.steps // 10)
    tail_correct = tail_seen = 0
    tail_loss = 0.0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=recipe.steps, desc="pretraining demo backbone", unit="step", dynamic_ncols=True)
    start = time.perf_counter()
    try:
        for step in range(recipe.steps):
            crops, labels = sample_batch(images, classes, recipe, generator)
            crops = augment_batch(crops, recipe, generator)
            pixels = (crops - mean) / std
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine_lr(step, recipe.lr, recipe.warmup_steps, recipe.steps, recipe.min_lr_ratio)
            logits = head(_pooled(model(pixel_values=pixels).last_hidden_state, recipe))
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
            optimizer.step()
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"pretraining diverged at step {step}: loss {loss.item()}")
            correct = int((logits.argmax(-1) == labels).sum())
            if step >= recipe.steps - tail:
                tail_correct += correct
                tail_seen += labels.numel()
                tail_loss += loss.item() * labels.numel()
            if bar is not None:
                bar.update(1)
                if step % 10 == 0 or step == recipe.steps - 1:
                    bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{correct / labels.numel():.2f}")
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start

    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    stats = {
        "seconds": round(seconds, 2),
        "steps": recipe.steps,
        "final_train_accuracy": tail_correct / tail_seen,
        "final_loss": tail_loss / tail_seen,
        "photos": names,
        "num_classes": num_classes,
        "torch_threads": torch.get_num_threads(),
        "recipe_key": recipe.key(),
    }
    (out_dir / RECIPE_FILE).write_text(json.dumps(recipe.to_dict(), indent=2, sort_keys=True) + "\n")
    (out_dir / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
    return stats


# ------------------------------------------------------------------------------------------------
# Cache
# ------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$DRORAE_CACHE``, else ``$XDG_CACHE_HOME/drorae``, else ``~/.cache/drorae``."""
    if os.environ.get("DRORAE_CACHE"):
        return Path(os.environ["DRORAE_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "drorae"
    return Path.home() / ".cache" / "drorae"


def _is_complete(entry: Path, recipe: BackboneRecipe) -> bool:
    try:
        saved = BackboneRecipe.from_json((entry / RECIPE_FILE).read_text())
    except (OSError, ValueError, TypeError):
        return False
    return saved == recipe and (entry / "config.json").is_file() and (entry / STATS_FILE).is_file()


#: the default recipe's backbone as ``drorae demo`` pretrained it (AMD EPYC, 2 threads, torch 2.14.1; 4.8 MB), so that
#: a first ``make demo`` does not spend its minutes on pretraining; ``shipped=False`` (``--pretrain-backbone``)
#: pretrains instead
SHIPPED_BACKBONE = Path(__file__).parent / "assets" / "backbone"


def cached_backbone(
    recipe: BackboneRecipe | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    shipped: bool = True,
) -> Path:
    """The directory of ``recipe``'s pretrained backbone (default recipe if ``None``).

    Looks in ``cache_dir`` (default :func:`default_cache_dir`) under
    ``backbones/<recipe.key()>/``; when missing, copies the shipped pretrained backbone there if it was made with
    this very recipe (and ``shipped``), else trains it with :func:`pretrain_backbone`. Either writes to a temporary
    sibling directory that is renamed into place when complete, so an interrupted run leaves no partial entry
    (only a ``.tmp-*`` directory that the next run ignores), and two concurrent runs cannot corrupt each other.
    """
    recipe = recipe or BackboneRecipe()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    parent = root / "backbones"
    entry = parent / recipe.key()
    if _is_complete(entry, recipe):
        return entry
    if entry.exists():
        raise RuntimeError(
            f"cache entry {entry} exists but is not a complete backbone for this recipe; delete it to retrain"
        )
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{recipe.key()}-", dir=parent))
    try:
        if shipped and _is_complete(SHIPPED_BACKBONE, recipe):
            print(f"using the shipped pretrained backbone {SHIPPED_BACKBONE} (recipe {recipe.key()}; "
                  "--pretrain-backbone pretrains it here instead)", flush=True)  # fmt: skip
            shutil.copytree(SHIPPED_BACKBONE, tmp, dirs_exist_ok=True)
        else:
            pretrain_backbone(recipe, tmp, progress=progress)
        try:
            os.rename(tmp, entry)
        except OSError:
            if not _is_complete(entry, recipe):  # not a concurrent run that finished first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return entry


# ------------------------------------------------------------------------------------------------
# Layer probe: what pretraining did to each block
# ------------------------------------------------------------------------------------------------


def probe_demo_backbones(
    backbones: dict[str, str | os.PathLike],
    input_size: int = 64,
    train_count: int = 512,
    test_count: int = 256,
    seed: int = 0,
    alpha: float = 1.0,
    batch_size: int = 64,
) -> dict[str, dict[str, Any]]:
    """Linear pixel probe of every block for each backbone directory, ``{label: probe}``.

    The ridge probe is fitted on :func:`~drorae.sample_photos.fixed_eval_crops` of the TRAIN
    photos and evaluated on crops of the HELD-OUT photos, at ``input_size`` (the crop size),
    with :func:`drorae.studies.analysis.probe_backbone`: ``{"blocks": [dB per block], "z_base": dB}``.
    """
    from ..studies.analysis import probe_backbone
    from ..tokenizer.backbones import load_backbone

    train = sample_photos.fixed_eval_crops(sample_photos.load_photos("train"), input_size, train_count, seed=seed)
    test = sample_photos.fixed_eval_crops(sample_photos.load_photos("heldout"), input_size, test_count, seed=seed + 1)
    results = {}
    for label, directory in backbones.items():
        backbone = load_backbone(str(directory), input_size=input_size)
        results[label] = probe_backbone(backbone, train, test, alpha=alpha, batch_size=batch_size)
    return results


# How the recipe and the demo's budgets were chosen, with every candidate's numbers: docs/demo-tuning-history.md
