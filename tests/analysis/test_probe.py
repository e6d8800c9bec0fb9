"""Tests for drorae.studies.analysis: patch order, ridge maths, layer probe sanity cases, plots."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from drorae.studies.analysis import (
    RidgeAccumulator,
    fit_ridge,
    layer_probe,
    patchify,
    plot_layer_probe,
    plot_router_weights,
    predict,
    probe_backbone,
    router_weight_maps,
    unpatchify,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Natural-ish images in [0, 1]: upsampled low-resolution noise (patches are correlated)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 4, size // 4, generator=g)
    return F.interpolate(low, size=size, mode="bilinear", align_corners=False).clamp(0, 1)


# --------------------------------------------------------------------------------------------- patches


def test_patchify_matches_conv_patch_order_and_roundtrips() -> None:
    x = torch.rand(2, 3, 12, 8)
    patches = patchify(x, 4)
    assert patches.shape == (2, 6, 48)
    # F.unfold flattens (c, i, j) per block and walks blocks row-major, like a ViT patch embed.
    torch.testing.assert_close(patches, F.unfold(x, kernel_size=4, stride=4).transpose(1, 2))
    # Token 1 is the patch right of token 0 (row-major grid order).
    torch.testing.assert_close(patches[:, 1].reshape(2, 3, 4, 4), x[:, :, 0:4, 4:8])
    torch.testing.assert_close(unpatchify(patches, 4, (3, 2)), x)


def test_patchify_rejects_indivisible_size() -> None:
    with pytest.raises(ValueError):
        patchify(torch.rand(1, 3, 10, 8), 4)


# --------------------------------------------------------------------------------------------- ridge


def test_fit_ridge_matches_numpy_closed_form() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) + 5.0
    y = x @ rng.normal(size=(6, 3)) + 0.1 * rng.normal(size=(200, 3)) + 2.0
    alpha = 3.0
    xc, yc = x - x.mean(0), y - y.mean(0)
    w_ref = np.linalg.solve(xc.T @ xc + alpha * np.eye(6), xc.T @ yc)
    b_ref = y.mean(0) - x.mean(0) @ w_ref

    w, b = fit_ridge(torch.from_numpy(x).float(), torch.from_numpy(y).float(), alpha)
    assert w.dtype == torch.float64 and w.shape == (6, 3) and b.shape == (3,)
    np.testing.assert_allclose(w.numpy(), w_ref, rtol=1e-5, atol=1e-6)  # inputs went through float32
    np.testing.assert_allclose(b.numpy(), b_ref, rtol=1e-5, atol=1e-5)
    pred = predict(torch.from_numpy(x), w, b)
    np.testing.assert_allclose(pred.numpy(), x @ w.numpy() + b.numpy(), rtol=1e-10)


def test_fit_ridge_alpha_zero_is_least_squares() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(50, 4)), rng.normal(size=(50, 2))
    w, b = fit_ridge(torch.from_numpy(x), torch.from_numpy(y), alpha=0.0)
    design = np.hstack([x, np.ones((50, 1))])
    sol = np.linalg.lstsq(design, y, rcond=None)[0]
    np.testing.assert_allclose(w.numpy(), sol[:4], atol=1e-10)
    np.testing.assert_allclose(b.numpy(), sol[4], atol=1e-10)


def test_ridge_accumulator_streaming_equals_one_shot() -> None:
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(size=(97, 5)) * 2 + 30)
    y = torch.from_numpy(rng.normal(size=(97, 4)))
    acc = RidgeAccumulator()
    for xb, yb in zip(x.split(13), y.split(13)):
        acc.update(xb, yb)
    w_stream, b_stream = acc.solve(0.5)
    w_once, b_once = fit_ridge(x, y, 0.5)
    torch.testing.assert_close(w_stream, w_once, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(b_stream, b_once, rtol=1e-9, atol=1e-10)


# --------------------------------------------------------------------------------------------- layer probe


def _patch_pixels(n_images: int, seed: int) -> torch.Tensor:
    return patchify(_smooth_images(n_images, 16, seed), 4).flatten(0, 1)  # [n*16, 48]


def _mean_predictor_psnr(train_pixels: torch.Tensor, test_pixels: torch.Tensor) -> float:
    mse = (test_pixels.double() - train_pixels.double().mean(0)).pow(2).mean().item()
    return 10 * math.log10(1 / mse)


def test_layer_probe_sanity_cases() -> None:
    train_px, test_px = _patch_pixels(60, seed=0), _patch_pixels(20, seed=1)  # [960, 48], [320, 48]
    g = torch.Generator().manual_seed(3)
    mixing = torch.randn(48, 64, generator=g, dtype=torch.float64)  # full row rank: invertible on pixels

    def exact(px: torch.Tensor) -> torch.Tensor:
        return px.double() @ mixing

    def random_tokens(m: int) -> torch.Tensor:
        return torch.randn(m, 32, generator=g)

    psnrs = layer_probe(
        [exact(train_px), random_tokens(len(train_px))],
        train_px,
        [exact(test_px), random_tokens(len(test_px))],
        test_px,
        alpha=1e-8,
    )
    assert psnrs[0] > 60.0
    assert abs(psnrs[1] - _mean_predictor_psnr(train_px, test_px)) < 0.5


def test_layer_probe_rejects_layer_count_mismatch() -> None:
    px = torch.rand(10, 3)
    with pytest.raises(ValueError):
        layer_probe([torch.rand(10, 4)], px, [], px)


class _FakeBackbone:
    """Tiny stand-in for the frozen encoder: resizes (bicubic), patchifies, mixes linearly.

    Block 1 is an exact linear function of its patch pixels, block 2 adds noise, block 3 is
    independent noise, and z_base is the non-affine LayerNorm of block 2.
    """

    patch_size = 4
    input_size = 16

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.mixing = torch.randn(48, 64, generator=g)
        self.noise = torch.Generator().manual_seed(1)

    def __call__(self, images: torch.Tensor) -> SimpleNamespace:
        x = F.interpolate(images, size=(self.input_size,) * 2, mode="bicubic", align_corners=False)
        pixels = patchify(x, self.patch_size)  # [B, 16, 48], unclamped like a real backbone sees them
        block1 = pixels @ self.mixing
        block2 = block1 + 2.0 * torch.randn(block1.shape, generator=self.noise)
        block3 = torch.randn(block1.shape, generator=self.noise)
        z_base = F.layer_norm(block2, (64,))
        return SimpleNamespace(hidden_states=torch.stack([block1, block2, block3]), z_base=z_base)


def test_probe_backbone_with_fake_backbone() -> None:
    train, test = _smooth_images(40, 24, seed=4), _smooth_images(16, 24, seed=5)  # resized 24 -> 16
    result = probe_backbone(_FakeBackbone(), train, test, alpha=1e-6, batch_size=16)
    assert set(result) == {"blocks", "z_base"} and len(result["blocks"]) == 3
    b1, b2, b3 = result["blocks"]
    # >60 dB on block 1 only holds if the pixel targets are aligned with the tokens
    # (same bicubic resize, same row-major patch order). Targets are clamped to [0, 1]; the fake
    # backbone sees the unclamped resize, so allow for bicubic overshoot being tiny here.
    assert b1 > 60.0
    assert b1 > b2 > b3
    assert math.isfinite(result["z_base"])

    # An iterable of (images, labels) batches gives the same numbers as one tensor.
    batches = [(chunk, None) for chunk in train.split(16)]
    again = probe_backbone(_FakeBackbone(), batches, [test], alpha=1e-6)
    assert again["blocks"][0] == pytest.approx(b1, abs=1e-6)


# --------------------------------------------------------------------------------------------- router maps and plots


def test_router_weight_maps_layout() -> None:
    weights = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(2, 6, 3)  # [B, N, L]
    maps = router_weight_maps(weights, (2, 3))
    assert maps.shape == (2, 3, 2, 3)
    # Token n = i * w + j sits at (i, j).
    assert maps[1, 2, 1, 0] == weights[1, 3, 2]
    with pytest.raises(ValueError):
        router_weight_maps(weights, (2, 2))


def test_plot_router_weights_writes_png(tmp_path: Path) -> None:
    maps = router_weight_maps(torch.randn(2, 16, 4), (4, 4))
    out = plot_router_weights(maps, tmp_path / "fig" / "router.png", layer_names=["b9", "b10", "b11", "b12"])
    assert out.read_bytes()[:8] == PNG_MAGIC
    single = plot_router_weights(torch.rand(3, 4, 4), tmp_path / "single.png")  # all positive: still valid
    assert single.read_bytes()[:8] == PNG_MAGIC


def test_plot_layer_probe_writes_png(tmp_path: Path) -> None:
    labels = ["b1", "b2", "b3", "z_base"]
    out = plot_layer_probe([39.2, 37.6, 36.7, 31.2], tmp_path / "probe.png", labels)
    assert out.read_bytes()[:8] == PNG_MAGIC
    both = {"random init": [39.2, 37.6, 36.7, 31.2], "pretrained": [35.9, 32.2, 29.2, 25.0]}
    assert plot_layer_probe(both, tmp_path / "probe2.png", labels).read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError):
        plot_layer_probe([1.0, 2.0], tmp_path / "bad.png", labels)
