"""``drorae analyze``: what fusion changes, image by image (paper section 4.6 and appendix E).

For a few images it compares the originals with the model's reconstructions with fusion off (RAE) and on
(DRoRAE) in the frequency domain, shows the router's weights for every fused layer, and measures how the fused
latent differs from RAE's; all numbers go to ``analysis.json``, the pictures to PNGs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .figures import new_figure, plot_router_weights, router_weight_maps, save_figure
from .latents import fused_vs_base, pca_rgb
from .spectra import log_magnitude_spectrum, radial_power_spectrum, spectral_difference, spectral_mad


def load_images(paths: list[str | Path], size: int) -> tuple[torch.Tensor, list[str], list[str]]:
    """ADM-centre-cropped images ``[B, 3, size, size]`` in [0, 1], their paths, and the unreadable paths."""
    from ...data.adm import load_adm_image

    images, used, skipped = [], [], []
    for path in paths:
        image = load_adm_image(path, size)
        if image is None:
            skipped.append(str(path))
            continue
        images.append(image.float() / 255)
        used.append(str(path))
    if not images:
        raise ValueError(f"none of the {len(paths)} images could be read: {skipped[:5]}")
    return torch.stack(images), used, skipped


@torch.no_grad()
def analyze(
    model_dir: str | Path, image_paths: list[str | Path], out_dir: str | Path, device: str = "cpu"
) -> dict[str, Any]:
    """Run the analyses on ``image_paths`` and write ``analysis.json`` and the figures to ``out_dir``."""
    from ...tokenizer.model import DRoRAE

    model = DRoRAE.from_pretrained(model_dir, map_location=device).eval()
    if model.fusion is None:
        raise ValueError(f"{model_dir} has no fusion module: analyze compares fusion off (RAE) with fusion on")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x, used, skipped = load_images(image_paths, model.decoder.config.image_size)
    x = x.to(device)
    feats = model.backbone(x)  # one backbone pass serves both reconstructions
    model.fusion_enabled = False
    rae = model.decode(model.tokens_to_latent(model.tokens_from_features(feats)[0])).clamp(0, 1)
    model.fusion_enabled = True
    z_final, z_base, fused = model.tokens_from_features(feats)
    drorae = model.decode(model.tokens_to_latent(z_final)).clamp(0, 1)
    x, rae, drorae = x.cpu(), rae.cpu(), drorae.cpu()

    grid = (model.backbone.grid_size, model.backbone.grid_size)
    maps = router_weight_maps(fused.weights.cpu(), grid)  # [B, K, h, w]
    w = fused.weights.double().cpu()
    latent = fused_vs_base(fused.fused.cpu(), z_base.cpu())
    radial = {
        name: radial_power_spectrum(images)[0].mean(0)
        for name, images in (("original", x), ("rae", rae), ("drorae", drorae))
    }
    mad = {"rae": spectral_mad(x, rae), "drorae": spectral_mad(x, drorae)}
    layers = model.fusion.layers
    report = {
        "model": str(model_dir),
        "images": used,
        "skipped": skipped,
        "spectral_mad": {k: {"per_image": v.tolist(), "mean": float(v.mean())} for k, v in mad.items()},
        "radial_power": {k: v.tolist() for k, v in radial.items()},
        "router_weights": {
            f"block {k}": {"mean": float(w[..., i].mean()), "std": float(w[..., i].std())} for i, k in enumerate(layers)
        },
        "cos_z_fuse_z_base": latent["cos"].tolist(),
        "norm_z_fuse_minus_z_base": latent["distance"].tolist(),
        "figures": {},
    }
    report["figures"]["spectra"] = _plot_spectra(out / "spectra.png", x, rae, drorae, mad).name
    report["figures"]["radial_power"] = _plot_radial(out / "radial_power.png", radial).name
    report["figures"]["router_weights"] = plot_router_weights(
        maps,
        out / "router_weights.png",
        layer_names=[f"block {k}" for k in layers],
        title="router weights per token (rows: images)",
    ).name
    pcas = [pca_rgb(z_base.cpu(), grid), pca_rgb(z_final.cpu(), grid)]
    report["figures"]["pca"] = _plot_rows(out / "pca.png", [x, *pcas], ["original", "PCA z_base", "PCA z_final"]).name
    (out / "analysis.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _plot_rows(path: Path, columns: list[torch.Tensor], titles: list[str]) -> Path:
    n = columns[0].shape[0]
    fig = new_figure((2.0 * len(columns), 2.0 * n), layout="constrained")
    axes = fig.subplots(n, len(columns), squeeze=False)
    for i in range(n):
        for j, images in enumerate(columns):
            axes[i][j].imshow(images[i].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            axes[i][j].axis("off")
            if i == 0:
                axes[i][j].set_title(titles[j], fontsize=9)
    return save_figure(fig, path)


def _plot_spectra(path: Path, x, rae, drorae, mad: dict[str, torch.Tensor]) -> Path:
    spectra = [log_magnitude_spectrum(v) for v in (x, rae, drorae)]
    diffs = [spectral_difference(x, rae), spectral_difference(x, drorae)]
    vmax_diff = float(max(d.max() for d in diffs)) or 1.0
    titles = ["original", "|FFT| original", "|FFT| RAE", "|FFT| DRoRAE", "|diff| RAE", "|diff| DRoRAE"]
    n = x.shape[0]
    fig = new_figure((2.0 * len(titles), 2.0 * n), layout="constrained")
    axes = fig.subplots(n, len(titles), squeeze=False)
    for i in range(n):
        panels = [x[i].permute(1, 2, 0).numpy(), *(s[i].numpy() for s in spectra), *(d[i].numpy() for d in diffs)]
        for j, panel in enumerate(panels):
            ax = axes[i][j]
            if j == 0:
                ax.imshow(np.clip(panel, 0, 1))
            elif j < 4:
                ax.imshow(panel, cmap="magma")
            else:
                ax.imshow(panel, cmap="magma", vmin=0, vmax=vmax_diff)
                key = "rae" if j == 4 else "drorae"
                ax.set_xlabel(f"MAD {float(mad[key][i]):.3f}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=9)
    return save_figure(fig, path)


def _plot_radial(path: Path, radial: dict[str, torch.Tensor]) -> Path:
    fig = new_figure((5.5, 3.5), layout="constrained")
    ax = fig.subplots()
    for name, curve in radial.items():
        ax.plot(curve.numpy(), label=name)
    ax.set_yscale("log")
    ax.set_xlabel("spatial frequency (radius in FFT bins)")
    ax.set_ylabel("mean power")
    ax.legend()
    return save_figure(fig, path)
