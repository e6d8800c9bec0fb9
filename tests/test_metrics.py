"""Tests for drorae.evaluation.metrics: PSNR/SSIM against closed forms and skimage, Fréchet distance maths."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from skimage import data as skdata

from drorae.evaluation.metrics import (
    INCEPTION_FID_SHA256,
    FeatureStats,
    FrechetFeatureDistance,
    InceptionFID,
    _resize_tf_bilinear,
    frechet_distance,
    load_inception_fid,
    psnr,
)


def _photo_batch(size: int = 48) -> torch.Tensor:
    """Two real photos shipped with scikit-image (no download), resized to ``size``."""
    photos = [skdata.astronaut(), skdata.chelsea()]
    tensors = [torch.from_numpy(p).permute(2, 0, 1).float() / 255 for p in photos]
    return torch.stack([F.interpolate(t[None], size=(size, size), mode="area")[0] for t in tensors])


# --------------------------------------------------------------------------------------------- PSNR


def test_psnr_constant_offset_is_20db() -> None:
    x = torch.full((2, 3, 16, 16), 0.5)
    assert torch.allclose(psnr(x, x + 0.1), torch.full((2,), 20.0), atol=1e-4)


def test_psnr_known_mse_and_data_range() -> None:
    x = torch.rand(3, 3, 8, 8) * 0.5
    y = x + 0.05  # MSE = 2.5e-3 -> 26.0206 dB
    expected = 10 * math.log10(1 / 0.05**2)
    assert torch.allclose(psnr(x, y), torch.full((3,), expected), atol=1e-4)
    assert torch.allclose(psnr(x * 255, y * 255, data_range=255.0), torch.full((3,), expected), atol=1e-4)


def test_psnr_identical_images_is_inf() -> None:
    x = torch.rand(2, 3, 8, 8)
    assert torch.isinf(psnr(x, x)).all()


def test_psnr_clamps_inputs() -> None:
    x = torch.full((1, 3, 4, 4), 0.5)
    # 3.0 is clamped to 1.0: MSE 0.25 -> 6.0206 dB.
    assert psnr(x, torch.full_like(x, 3.0)).item() == pytest.approx(10 * math.log10(4), abs=1e-4)


def test_psnr_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError):
        psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))


# --------------------------------------------------------------------------------------------- SSIM
# `drorae eval` scores SSIM as RAE's evaluation does: torchmetrics' structural_similarity_index_measure (Gaussian
# window, sigma 1.5, 11 taps, population covariance, data_range 1), whose map covers every pixel (the borders read a
# reflection of the image) and is averaged over all of them. scikit-image computes the same map but averages only the
# interior, (win - 1) / 2 = 5 pixels in from each edge. That is a different, documented convention, not a bug: the
# tests below take the reference from the SSIM equation (Wang et al. 2004) by hand, check that its interior gives
# scikit-image's number, and check a closed form.

K1, K2, PAD = 0.01, 0.03, 5


def _ssim_map_by_hand(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The SSIM map [H, W, C] of two [H, W, C] images in [0, 1] from its equation, the local moments from
    scipy's Gaussian filter (sigma 1.5, truncated at 3.5 sigma: 11 taps) on a mirror-reflected border."""
    from scipy.ndimage import gaussian_filter

    def filt(a):
        return np.stack([gaussian_filter(a[..., c], 1.5, truncate=3.5, mode="mirror") for c in range(a.shape[-1])], -1)

    c1, c2 = K1**2, K2**2
    ux, uy = filt(x), filt(y)
    vx, vy, vxy = filt(x * x) - ux * ux, filt(y * y) - uy * uy, filt(x * y) - ux * uy
    return (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def test_ssim_of_flat_images_is_the_luminance_term() -> None:
    from drorae.evaluation.reconstruction import image_scores

    a, b = 51 / 255, 153 / 255  # exact uint8 levels: the quantisation of drorae eval leaves them unchanged
    x, y = torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b)
    expected = (2 * a * b + K1**2) / (a * a + b * b + K1**2)  # no variance: the contrast-structure term is 1
    # torchmetrics works in float32: on a flat image E[x^2] - E[x]^2 cancels to ~1e-8, which against
    # C2 = 9e-4 moves the value by ~1e-4 (on the photos below by ~1e-6); a wrong constant or window moves it by far more
    assert image_scores(x, y)["ssim"].item() == pytest.approx(expected, abs=2e-4)
    assert image_scores(x, x)["ssim"].item() == pytest.approx(1.0, abs=1e-6)


def test_ssim_of_drorae_eval_is_the_gaussian_ssim_map_over_every_pixel() -> None:
    from skimage.metrics import structural_similarity

    from drorae.evaluation.reconstruction import image_scores

    x = _photo_batch(48)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    y = (x + 0.1 * noise).clamp(0, 1)
    xq, yq = [(t * 255).round() / 255 for t in (x, y)]  # the uint8 levels that drorae eval scores
    ours = image_scores(x, y)["ssim"]
    for i in range(2):
        a, b = (t[i].permute(1, 2, 0).double().numpy() for t in (xq, yq))
        full = _ssim_map_by_hand(b, a)
        assert ours[i].item() == pytest.approx(full.mean(), abs=1e-5)
        sk = structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1
        )
        assert sk == pytest.approx(full[PAD:-PAD, PAD:-PAD].mean(), abs=1e-10)  # the same map, its interior
        assert abs(sk - ours[i].item()) > 1e-3  # the two conventions do differ on a 48 px image


# --------------------------------------------------------------------------------------------- Fréchet


def _random_cov(dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, 2 * dim))
    return a @ a.T / (2 * dim)


def test_frechet_identical_stats_is_zero() -> None:
    mu, cov = np.arange(8.0), _random_cov(8, 0)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-8)


def test_frechet_mean_shift_with_identity_cov() -> None:
    d = np.array([1.0, -2.0, 0.5, 0.0])
    eye = np.eye(4)
    assert frechet_distance(np.zeros(4), eye, d, eye) == pytest.approx(float(d @ d), abs=1e-10)


def test_frechet_diagonal_closed_form_and_tensor_inputs() -> None:
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    value = frechet_distance(torch.tensor(mu1), torch.tensor(np.diag(a)), torch.tensor(mu2), torch.tensor(np.diag(b)))
    assert value == pytest.approx(expected, abs=1e-10)


def test_frechet_matches_scipy_sqrtm_formula() -> None:
    s1, s2 = _random_cov(16, 1), _random_cov(16, 2)
    mu1, mu2 = np.random.default_rng(3).normal(size=(2, 16))
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_rank_deficient_is_finite() -> None:
    rng = np.random.default_rng(4)
    f1, f2 = rng.normal(size=(5, 32)), rng.normal(size=(5, 32)) + 1  # 5 samples, 32 dims
    mu1, mu2, s1, s2 = f1.mean(0), f2.mean(0), np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    value = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(value) and value > 0
    # pytorch-fid's formula: scipy's sqrtm of the singular product (rank 4 of 32) keeps ~1e-7 of round-off
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    assert np.abs(covmean.imag).max() < 1e-6
    trace_terms = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
    assert value == pytest.approx(trace_terms - 2 * np.trace(covmean).real, rel=1e-7)
    # exact: with s_i = A_i^T A_i (A_i the centred rows / 2), tr (s1 s2)^1/2 is the nuclear norm of the 5 x 5 A1 A2^T
    # (the square roots of the 28 zero eigenvalues, ~1e-16 after round-off, cost drorae ~7e-9 of the value)
    a1, a2 = (f1 - mu1) / 2, (f2 - mu2) / 2
    assert value == pytest.approx(trace_terms - 2 * np.linalg.svd(a1 @ a2.T, compute_uv=False).sum(), rel=2e-8)


def test_feature_stats_streaming_matches_numpy() -> None:
    rng = np.random.default_rng(5)
    feats = rng.normal(size=(103, 7)) * 3 + 1e3  # large mean: the naive E[xx]-E[x]^2 would cancel
    stats = FeatureStats()
    for chunk in np.array_split(feats, [1, 10, 50]):  # uneven batches, including a single sample
        stats.update(torch.from_numpy(chunk))
    assert stats.num_samples == 103
    np.testing.assert_allclose(stats.mean.numpy(), feats.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance.numpy(), np.cov(feats, rowvar=False), rtol=1e-9, atol=1e-9)

    left, right = FeatureStats(), FeatureStats()
    left.update(torch.from_numpy(feats[:40]))
    right.update(torch.from_numpy(feats[40:]))
    left.merge(right)
    np.testing.assert_allclose(left.covariance.numpy(), np.cov(feats, rowvar=False), rtol=1e-9, atol=1e-9)


def test_feature_stats_errors() -> None:
    stats = FeatureStats()
    with pytest.raises(RuntimeError):
        _ = stats.mean
    stats.update(torch.zeros(1, 3))
    with pytest.raises(RuntimeError):
        _ = stats.covariance
    with pytest.raises(ValueError):
        stats.update(torch.zeros(2, 4))


def _pooled(images: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(images, 2).flatten(1)  # [B, 12] toy feature space


def test_frechet_feature_distance_streaming() -> None:
    g = torch.Generator().manual_seed(6)
    real = torch.rand(64, 3, 8, 8, generator=g)
    fd = FrechetFeatureDistance(_pooled, name="FD-toy")
    for chunk in real.split(20):
        fd.update(real=chunk, fake=chunk)
    assert fd.compute() == pytest.approx(0.0, abs=1e-8)

    fd.reset()
    fd.update(real=real)
    fd.update(fake=(real + 0.3).clamp(0, 1))
    feats_r, feats_f = _pooled(real).double().numpy(), _pooled((real + 0.3).clamp(0, 1)).double().numpy()
    expected = frechet_distance(
        feats_r.mean(0), np.cov(feats_r, rowvar=False), feats_f.mean(0), np.cov(feats_f, rowvar=False)
    )
    assert fd.compute() == pytest.approx(expected, rel=1e-6)
    assert "FD-toy" in repr(fd)


def test_frechet_feature_distance_validates() -> None:
    fd = FrechetFeatureDistance(lambda x: x, name="bad")
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        fd.update(real=torch.rand(2, 3, 4, 4))
    fd = FrechetFeatureDistance(_pooled, name="few")
    fd.update(real=torch.rand(1, 3, 4, 4), fake=torch.rand(3, 3, 4, 4))
    with pytest.raises(RuntimeError, match="at least 2 real"):
        fd.compute()


def test_precomputed_real_features_give_the_same_distance() -> None:
    """Callers that already ran the feature network on the originals pass its output instead."""
    g = torch.Generator().manual_seed(8)
    x = torch.rand(10, 3, 16, 16, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    plain, shared = FrechetFeatureDistance(_pooled, name="a"), FrechetFeatureDistance(_pooled, name="b")
    for xb, yb in zip(x.split(4), y.split(4)):
        plain.update(real=xb, fake=yb)
        shared.update(fake=yb, real_features=_pooled(xb))
    assert shared.compute() == pytest.approx(plain.compute(), rel=1e-12)
    fd = FrechetFeatureDistance(_pooled, name="FD-toy")
    with pytest.raises(ValueError, match="either real images or real_features"):
        fd.update(real=x, real_features=_pooled(x))
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        fd.update(real_features=torch.rand(2, 3, 4))


# --------------------------------------------------------------------------------------------- Inception


def test_tf_bilinear_resize_matches_affine_grid_formulation() -> None:
    # Reference: TF1 resize_bilinear expressed with grid_sample (source coordinate j * in / out).
    x = torch.rand(2, 3, 37, 64, dtype=torch.float64) * 255
    out_h, out_w = 299, 299
    theta = torch.tensor([[1.0, 0.0, 1 / 64 - 1 / out_w], [0.0, 1.0, 1 / 37 - 1 / out_h]], dtype=torch.float64)
    grid = F.affine_grid(theta.expand(2, 2, 3), [2, 3, out_h, out_w], align_corners=False)
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    torch.testing.assert_close(_resize_tf_bilinear(x, (out_h, out_w)), ref, atol=1e-9, rtol=0)


class _RecordingNet(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last_input = x
        return x.mean(dim=(1, 2, 3), keepdim=True).expand(-1, 2048, 1, 1)


def test_inception_fid_preprocessing() -> None:
    net = _RecordingNet()
    model = InceptionFID(net)
    feats = model(torch.rand(2, 3, 64, 64))
    assert feats.shape == (2, 2048) and model.num_features == 2048
    seen = net.last_input
    assert seen.shape == (2, 3, 299, 299)
    assert seen.min() >= -1.0 and seen.max() <= 255 / 128 - 1
    # 299x299 8-bit input is passed through unresized: values are exactly v/128 - 1.
    img = torch.randint(0, 256, (1, 3, 299, 299)).float() / 255
    model(img)
    torch.testing.assert_close(net.last_input, img * 255 / 128 - 1)


def test_load_inception_fid_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "default_1.pt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_inception_fid(missing)


class _PoolNet(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3), keepdim=True).expand(-1, 2048, 1, 1)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_load_inception_fid_checks_sha256(tmp_path: Path) -> None:
    fake = tmp_path / "default_1.pt"
    torch.jit.script(_PoolNet()).save(str(fake))
    with pytest.raises(ValueError, match="sha256"):
        load_inception_fid(fake)
    model = load_inception_fid(fake, verify=False)  # loader path itself works on any TorchScript file
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 2048)


def test_real_inception_features_are_deterministic_across_batch_sizes(inception_fid_weights) -> None:
    model = load_inception_fid(inception_fid_weights)  # checks the pinned sha256
    images = torch.cat([_photo_batch(64), _photo_batch(64).flip(-1)])  # 4 images, resized to 299 inside
    whole = model(images)
    assert whole.shape == (4, 2048) and torch.isfinite(whole).all() and (whole >= 0).all()
    split = torch.cat([model(images[:1]), model(images[1:3]), model(images[3:])])
    torch.testing.assert_close(split, whole, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(whole[0], whole[1])
    assert len(INCEPTION_FID_SHA256) == 64
