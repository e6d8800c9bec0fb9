"""The layer probe: how much pixel detail each encoder layer still carries.

The layer probe measures how much pixel detail each encoder layer still carries: a ridge
regression from each token to the pixels of its own patch is fitted on training images and
evaluated (PSNR, dB) on held-out images. Deep layers of a semantically pretrained ViT lose
detail (the paper's figure 1), which is the motivation for fusing all layers.

Everything here runs in float64 on the device of the inputs: the probe solves ``C x C``
normal equations, which are ill-conditioned in float32 for LayerNorm'ed tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...evaluation.metrics import FeatureStats

__all__ = [
    "patchify",
    "unpatchify",
    "RidgeAccumulator",
    "fit_ridge",
    "predict",
    "layer_probe",
    "probe_backbone",
]


# ---------------------------------------------------------------------------------------------
# Patches
# ---------------------------------------------------------------------------------------------


def patchify(images: Tensor, patch: int) -> Tensor:
    """Split images into non-overlapping patches in ViT token order.

    Args:
        images: ``[B, C, H, W]`` with ``H`` and ``W`` divisible by ``patch``.
        patch: Patch side length in pixels.

    Returns:
        ``[B, N, C * patch * patch]`` with ``N = (H / patch) * (W / patch)``. Tokens are in
        row-major order over the patch grid (the order of a ViT's ``Conv2d`` patch embedding
        flattened with ``.flatten(2)``). Within a patch, values are channel-major
        ``(c, i, j)``, the layout of a flattened ``Conv2d`` weight; note that MAE/RAE decoder
        heads predict ``(i, j, c)`` instead. The probe is invariant to this choice.
    """
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {patch}")
    gh, gw = h // patch, w // patch
    x = images.reshape(b, c, gh, patch, gw, patch)
    x = x.permute(0, 2, 4, 1, 3, 5)  # [B, gh, gw, C, p, p]
    return x.reshape(b, gh * gw, c * patch * patch)


def unpatchify(patches: Tensor, patch: int, grid_hw: tuple[int, int], channels: int = 3) -> Tensor:
    """Inverse of :func:`patchify`: ``[B, N, C*p*p]`` -> ``[B, C, gh*p, gw*p]``."""
    b, n, d = patches.shape
    gh, gw = grid_hw
    if n != gh * gw or d != channels * patch * patch:
        raise ValueError(
            f"patches {tuple(patches.shape)} do not match grid {grid_hw}, patch {patch}, {channels} channels"
        )
    x = patches.reshape(b, gh, gw, channels, patch, patch)
    x = x.permute(0, 3, 1, 4, 2, 5)  # [B, C, gh, p, gw, p]
    return x.reshape(b, channels, gh * patch, gw * patch)


# ---------------------------------------------------------------------------------------------
# Ridge regression
# ---------------------------------------------------------------------------------------------


class RidgeAccumulator:
    """Streaming sufficient statistics for ridge regression ``Y ~ X W + b``.

    The joint running mean and centred second moment of ``[X, Y]`` (a
    :class:`~drorae.evaluation.metrics.FeatureStats`, float64, Chan et al.'s parallel update), whose blocks
    are the means of ``X`` and ``Y`` and the centred cross-products ``Xc^T Xc`` and ``Xc^T Yc``:
    fitting on many batches gives the answer of fitting on their concatenation without holding
    all tokens in memory.
    """

    def __init__(self) -> None:
        self.stats = FeatureStats()
        self.dim_x: int | None = None

    @property
    def num_samples(self) -> int:
        return self.stats.num_samples

    def update(self, x: Tensor, y: Tensor) -> RidgeAccumulator:
        """Add samples ``x [M, C]`` with targets ``y [M, P]``; returns ``self`` for chaining."""
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(f"expected x [M, C] and y [M, P], got {tuple(x.shape)} and {tuple(y.shape)}")
        if x.shape[0] == 0:
            return self
        self.dim_x = x.shape[1]
        self.stats.update(torch.cat([x.detach().double(), y.detach().double().to(x.device)], dim=1))
        return self

    @property
    def mean_x(self) -> Tensor:
        return self.stats.mean[: self.dim_x]

    @property
    def mean_y(self) -> Tensor:
        return self.stats.mean[self.dim_x :]

    @property
    def xx(self) -> Tensor:
        return self.stats.scatter[: self.dim_x, : self.dim_x]

    @property
    def xy(self) -> Tensor:
        return self.stats.scatter[: self.dim_x, self.dim_x :]

    def solve(self, alpha: float) -> tuple[Tensor, Tensor]:
        """Closed-form ridge solution ``W = (Xc^T Xc + alpha I)^{-1} Xc^T Yc``, ``b = my - mx W``.

        The intercept is not penalised (features and targets are centred). ``alpha`` is in the
        units of the summed Gram matrix, i.e. it is not rescaled by the number of samples.
        """
        if self.num_samples == 0:
            raise RuntimeError("RidgeAccumulator is empty: call update() first")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        gram = self.xx + alpha * torch.eye(self.xx.shape[0], dtype=self.xx.dtype, device=self.xx.device)
        if alpha > 0:
            # Gram + alpha*I is symmetric positive definite: Cholesky is the stable, cheap solve.
            factor, info = torch.linalg.cholesky_ex(gram)
            if int(info) == 0:
                weight = torch.cholesky_solve(self.xy, factor)
            else:  # numerically singular despite alpha: fall back to the pseudo-inverse
                weight = torch.linalg.pinv(gram, hermitian=True) @ self.xy
        else:
            # Ordinary least squares; the pseudo-inverse gives the minimum-norm solution when
            # tokens are rank-deficient (e.g. fewer samples than channels).
            weight = torch.linalg.pinv(gram, hermitian=True) @ self.xy
        bias = self.mean_y - self.mean_x @ weight
        return weight, bias


def fit_ridge(x: Tensor, y: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """Fit ridge regression ``y ~ x @ W + b`` in float64 with centred features and targets.

    Args:
        x: Features ``[M, C]``.
        y: Targets ``[M, P]``.
        alpha: L2 penalty on ``W`` (not on ``b``), added to the un-normalised ``Xc^T Xc``.

    Returns:
        ``(W [C, P], b [P])`` in float64.
    """
    return RidgeAccumulator().update(x, y).solve(alpha)


def predict(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Apply a fitted ridge model: ``x @ W + b`` (float64)."""
    return x.detach().double().to(weight.device) @ weight + bias


# ---------------------------------------------------------------------------------------------
# Layer probe
# ---------------------------------------------------------------------------------------------


class _SquaredErrorMeter:
    """Pooled squared error of clamped predictions, summed over every test pixel."""

    def __init__(self) -> None:
        self.sse = 0.0
        self.count = 0

    def update(self, prediction: Tensor, target: Tensor) -> None:
        err = prediction.clamp(0.0, 1.0) - target.double().to(prediction.device)
        self.sse += err.pow(2).sum().item()
        self.count += err.numel()

    def psnr(self) -> float:
        if self.count == 0:
            raise RuntimeError("no test samples were seen")
        mse = self.sse / self.count
        return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def layer_probe(
    train_tokens: Sequence[Tensor],
    train_pixels: Tensor,
    test_tokens: Sequence[Tensor],
    test_pixels: Tensor,
    alpha: float = 1.0,
) -> list[float]:
    """Linear pixel probe: how well each layer's tokens linearly predict their patch's pixels.

    For every layer, a ridge regression from tokens ``[M, C]`` to patch pixels ``[M, P]``
    (values in ``[0, 1]``, e.g. from :func:`patchify`) is fitted on the training set and
    applied to the test set; predictions are clamped to ``[0, 1]``.

    Returns:
        Held-out PSNR in dB per layer, ``10 log10(1 / MSE)`` with the MSE pooled over all test
        patches and pixels (not an average of per-image PSNRs).
    """
    if len(train_tokens) != len(test_tokens):
        raise ValueError(f"{len(train_tokens)} train layers but {len(test_tokens)} test layers")
    results = []
    for layer_train, layer_test in zip(train_tokens, test_tokens):
        weight, bias = fit_ridge(layer_train, train_pixels, alpha)
        meter = _SquaredErrorMeter()
        meter.update(predict(layer_test, weight, bias), test_pixels)
        results.append(meter.psnr())
    return results


def _iter_batches(images: Tensor | Iterable[Tensor], batch_size: int) -> Iterator[Tensor]:
    if isinstance(images, Tensor):
        yield from images.split(batch_size)
    else:
        for batch in images:
            # Accept (images, labels) pairs from ordinary DataLoaders.
            yield batch[0] if isinstance(batch, (tuple, list)) else batch


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _probe_targets(images: Tensor, input_hw: tuple[int, int], num_tokens: int, patch_size: int) -> Tensor:
    """Pixel patches ``[B*N, 3*p*p]`` aligned with the backbone's tokens."""
    images = images.float()
    if tuple(images.shape[-2:]) != input_hw:
        # Same resampling as the backbone's own preprocessing (bicubic, no antialias).
        images = F.interpolate(images, size=input_hw, mode="bicubic", align_corners=False)
    # Bicubic overshoots; the probe's targets are defined in [0, 1].
    images = images.clamp(0.0, 1.0)
    grid_h, grid_w = input_hw[0] // patch_size, input_hw[1] // patch_size
    if grid_h * grid_w != num_tokens:
        raise ValueError(
            f"backbone returned {num_tokens} tokens, but input {input_hw} with patch {patch_size} "
            f"gives a {grid_h}x{grid_w} grid"
        )
    pixel_patch = input_hw[0] // grid_h
    return patchify(images, pixel_patch).flatten(0, 1)


def _backbone_device(backbone: Any, fallback: torch.device) -> torch.device:
    params = getattr(backbone, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return fallback


@torch.no_grad()
def probe_backbone(
    backbone: Any,
    train_images: Tensor | Iterable[Tensor],
    test_images: Tensor | Iterable[Tensor],
    alpha: float = 1.0,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Run :func:`layer_probe` on every block of a frozen backbone, streaming over batches.

    ``backbone(images)`` must return an object with ``hidden_states`` (``[L, B, N, C]`` tensor
    or a sequence of L ``[B, N, C]`` tensors: outputs of blocks 1..L, prefix tokens removed) and
    ``z_base`` (``[B, N, C]``); ``backbone.patch_size`` and ``backbone.input_size`` (int or
    ``(H, W)``) define the token grid. Pixel targets are taken from the images resized to
    ``input_size`` with bicubic interpolation (``align_corners=False``), as the backbone does.

    Two passes are made (fit on ``train_images``, then evaluate on ``test_images``), keeping only
    ``C x C`` and ``C x P`` statistics per layer in memory, never all tokens; each image
    iterable is consumed exactly once.

    Args:
        backbone: The frozen encoder wrapper (called under ``torch.no_grad()``; its train/eval
            mode is left as is).
        train_images: ``[B, 3, H, W]`` tensor in ``[0, 1]`` or an iterable of such batches.
        test_images: Same, held out.
        alpha: Ridge penalty.
        batch_size: Batch size used when the images are given as one tensor.

    Returns:
        ``{"blocks": [PSNR dB for blocks 1..L], "z_base": PSNR dB}``.
    """
    input_hw = _pair(backbone.input_size)
    patch_size = int(backbone.patch_size)

    def encode(batch: Tensor) -> tuple[list[Tensor], Tensor]:
        device = _backbone_device(backbone, batch.device)
        batch = batch.to(device)
        out = backbone(batch)
        layers = [h.flatten(0, 1) for h in out.hidden_states] + [out.z_base.flatten(0, 1)]
        targets = _probe_targets(batch, input_hw, out.z_base.shape[1], patch_size)
        return layers, targets

    accumulators: list[RidgeAccumulator] = []
    for batch in _iter_batches(train_images, batch_size):
        layers, targets = encode(batch)
        if not accumulators:
            accumulators = [RidgeAccumulator() for _ in layers]
        for acc, tokens in zip(accumulators, layers):
            acc.update(tokens, targets)
    if not accumulators:
        raise ValueError("train_images is empty")
    solutions = [acc.solve(alpha) for acc in accumulators]

    meters = [_SquaredErrorMeter() for _ in solutions]
    for batch in _iter_batches(test_images, batch_size):
        layers, targets = encode(batch)
        for meter, (weight, bias), tokens in zip(meters, solutions, layers):
            meter.update(predict(tokens, weight, bias), targets)

    psnrs = [m.psnr() for m in meters]
    return {"blocks": psnrs[:-1], "z_base": psnrs[-1]}
