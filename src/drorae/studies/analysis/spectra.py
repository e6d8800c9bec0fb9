"""Frequency-domain comparison of originals and reconstructions (paper section 4.6, figure 6).

Spectra are taken of the luma (ITU-R 601) of each image: the centred 2-D FFT's log-magnitude
``log(1 + |F|)``, and the power ``|F|^2`` averaged over rings of equal radius (in frequency bins
from the centre). The spectral difference map is ``|S_rec - S_orig|``; its mean is the MAD.
"""

from __future__ import annotations

import torch
from torch import Tensor


def luma(images: Tensor) -> Tensor:
    """``[B, 3, H, W]`` RGB in [0, 1] -> ``[B, H, W]`` luma."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images [B, 3, H, W], got {tuple(images.shape)}")
    x = images.double()
    return 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]


def centred_fft(images: Tensor) -> Tensor:
    """The 2-D FFT of each image's luma with the zero frequency at the centre, ``[B, H, W]`` complex."""
    return torch.fft.fftshift(torch.fft.fft2(luma(images)), dim=(-2, -1))


def log_magnitude_spectrum(images: Tensor) -> Tensor:
    """``log(1 + |F|)`` of each image's centred luma spectrum, ``[B, H, W]`` (float64)."""
    return torch.log1p(centred_fft(images).abs())


def spectral_difference(originals: Tensor, reconstructions: Tensor) -> Tensor:
    """``|S_rec - S_orig|`` of the log-magnitude spectra, ``[B, H, W]`` (darker = better preserved)."""
    return (log_magnitude_spectrum(reconstructions) - log_magnitude_spectrum(originals)).abs()


def spectral_mad(originals: Tensor, reconstructions: Tensor) -> Tensor:
    """Mean absolute difference of the log-magnitude spectra, per image ``[B]``."""
    return spectral_difference(originals, reconstructions).flatten(1).mean(1)


def radial_power_spectrum(images: Tensor) -> tuple[Tensor, Tensor]:
    """Radially averaged power spectrum: ``(mean power per ring [B, R], bins per ring [R])``.

    Ring ``r`` holds the frequency bins whose distance from the centre rounds down to ``r``; so
    ``(mean * count).sum(-1)`` is the total spectral energy ``sum |F|^2`` (= ``H W sum luma^2``, Parseval).
    """
    power = centred_fft(images).abs().pow(2)  # [B, H, W]
    b, h, w = power.shape
    ys = torch.arange(h, dtype=torch.float64) - h // 2
    xs = torch.arange(w, dtype=torch.float64) - w // 2
    radius = torch.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2).floor().long().flatten()
    rings = int(radius.max()) + 1
    count = torch.bincount(radius, minlength=rings)
    totals = torch.zeros(b, rings, dtype=torch.float64).index_add_(1, radius, power.reshape(b, -1).cpu())
    return totals / count, count
