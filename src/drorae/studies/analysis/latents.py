"""How the fused latent differs from RAE's (paper appendix E): per-image similarity, distance, PCA images."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def fused_vs_base(z_fuse: Tensor, z_base: Tensor) -> dict[str, Tensor]:
    """Per image ``[B]``: the mean over tokens of ``cos(z_fuse, z_base)`` and of ``||z_fuse - z_base||``."""
    if z_fuse.shape != z_base.shape or z_fuse.ndim != 3:
        raise ValueError(f"expected two [B, N, C] latents, got {tuple(z_fuse.shape)} and {tuple(z_base.shape)}")
    a, b = z_fuse.double(), z_base.double()
    return {"cos": F.cosine_similarity(a, b, dim=-1).mean(1), "distance": (a - b).norm(dim=-1).mean(1)}


def pca_rgb(tokens: Tensor, grid_hw: tuple[int, int]) -> Tensor:
    """The first 3 principal components of ``tokens`` ``[B, N, C]`` (fitted over all B x N tokens) as RGB
    images ``[B, 3, h, w]`` in [0, 1], each component min-max scaled over the set (a constant one -> 0.5)."""
    b, n, c = tokens.shape
    h, w = grid_hw
    if n != h * w:
        raise ValueError(f"{n} tokens do not fit a {h}x{w} grid")
    x = tokens.double().reshape(b * n, c)
    x = x - x.mean(0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    k = min(3, vh.shape[0])
    proj = x @ vh[:k].T  # [B*N, k]
    if k < 3:
        proj = torch.cat([proj, torch.zeros(b * n, 3 - k, dtype=proj.dtype)], dim=1)
    low, high = proj.min(0).values, proj.max(0).values
    span = high - low
    scaled = torch.where(span > 1e-12, (proj - low) / span.clamp_min(1e-12), torch.full_like(proj, 0.5))
    return scaled.T.reshape(3, b, h, w).transpose(0, 1).float()
