"""Differentiable augmentation for discriminator inputs (DiffAugment, Zhao et al., 2020).

The same random transformations are applied to real and generated images before the
discriminator sees them, in both the discriminator and the generator step. Every operation is
differentiable with respect to the image, so the generator still receives gradients through the
augmented view.

Images are expected in ``[0, 1]``. The operations are defined in ``[-1, 1]`` space, as in the
paper (brightness shifts of up to +-0.5, zero padding and zero cutout = mid grey there), and the
result is mapped back to ``[0, 1]``-scale; it may leave that range, which discriminators accept.
Random parameters are drawn independently per sample.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["DiffAugment", "diff_augment", "parse_policy", "AUGMENTATIONS"]

_Op = Callable[[torch.Tensor, "torch.Generator | None", "DiffAugment"], torch.Tensor]


def _rand(shape: tuple[int, ...], x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform [0, 1) samples, drawn on the generator's device, returned on ``x``'s device/dtype."""
    device = generator.device if generator is not None else x.device
    return torch.rand(shape, generator=generator, device=device).to(device=x.device, dtype=x.dtype)


def _randint(
    low: int, high: int, shape: tuple[int, ...], x: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Integers in ``[low, high)``, on ``x``'s device."""
    device = generator.device if generator is not None else x.device
    return torch.randint(low, high, shape, generator=generator, device=device).to(x.device)


def _brightness(x: torch.Tensor, g: torch.Generator | None, aug: DiffAugment) -> torch.Tensor:
    # Additive shift in [-0.5, 0.5).
    return x + (_rand((x.shape[0], 1, 1, 1), x, g) - 0.5)


def _saturation(x: torch.Tensor, g: torch.Generator | None, aug: DiffAugment) -> torch.Tensor:
    # Scale the deviation from the per-pixel grey value by a factor in [0, 2).
    grey = x.mean(dim=1, keepdim=True)
    return grey + (x - grey) * (_rand((x.shape[0], 1, 1, 1), x, g) * 2.0)


def _contrast(x: torch.Tensor, g: torch.Generator | None, aug: DiffAugment) -> torch.Tensor:
    # Scale the deviation from the per-image mean by a factor in [0.5, 1.5).
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + (x - mean) * (_rand((x.shape[0], 1, 1, 1), x, g) + 0.5)


def _shift_indices(size: int, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Source index per output position for an integer shift per sample, and its validity."""
    positions = torch.arange(size, device=shift.device)[None, :] - shift[:, None]  # [B, size]
    valid = (positions >= 0) & (positions < size)
    return positions.clamp(0, size - 1), valid


def _translation(x: torch.Tensor, g: torch.Generator | None, aug: DiffAugment) -> torch.Tensor:
    # Integer shift of up to `translation_ratio` of each side, zero (mid-grey) fill.
    b, c, h, w = x.shape
    max_dy, max_dx = int(h * aug.translation_ratio + 0.5), int(w * aug.translation_ratio + 0.5)
    dy = _randint(-max_dy, max_dy + 1, (b,), x, g)
    dx = _randint(-max_dx, max_dx + 1, (b,), x, g)
    rows, valid_rows = _shift_indices(h, dy)
    cols, valid_cols = _shift_indices(w, dx)
    # Two gathers (rows, then columns) keep the op differentiable and batched.
    out = x.gather(2, rows[:, None, :, None].expand(b, c, h, w))
    out = out.gather(3, cols[:, None, None, :].expand(b, c, h, w))
    valid = valid_rows[:, None, :, None] & valid_cols[:, None, None, :]
    return out * valid.to(x.dtype)


def _cutout(x: torch.Tensor, g: torch.Generator | None, aug: DiffAugment) -> torch.Tensor:
    # Zero (mid-grey) one square of `cutout_ratio` of each side, centred anywhere in the image
    # (so it may be partly outside).
    b, _, h, w = x.shape
    size_h, size_w = int(h * aug.cutout_ratio + 0.5), int(w * aug.cutout_ratio + 0.5)
    top = _randint(0, h, (b,), x, g) - size_h // 2
    left = _randint(0, w, (b,), x, g) - size_w // 2
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size_h)  # [B, H]
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size_w)  # [B, W]
    keep = ~(in_rows[:, None, :, None] & in_cols[:, None, None, :])
    return x * keep.to(x.dtype)


#: Policy names and the operations they expand to, in application order.
AUGMENTATIONS: dict[str, tuple[_Op, ...]] = {
    "color": (_brightness, _saturation, _contrast),
    "brightness": (_brightness,),
    "saturation": (_saturation,),
    "contrast": (_contrast,),
    "translation": (_translation,),
    "cutout": (_cutout,),
}


def parse_policy(policy: str | None) -> list[str]:
    """Split ``"color,translation,cutout"`` into names; ``""``, ``"none"`` or ``None`` is empty."""
    if policy is None:
        return []
    names = [p.strip().lower() for p in policy.split(",") if p.strip()]
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown DiffAugment op(s) {unknown}; known: {sorted(AUGMENTATIONS)}")
    return names


class DiffAugment(nn.Module):
    """Differentiable augmentation of image batches ``[B, C, H, W]`` in ``[0, 1]``.

    Args:
        policy: comma-separated op names from :data:`AUGMENTATIONS`
            (``"color"`` = brightness + saturation + contrast).
        translation_ratio: maximum shift as a fraction of the image side.
        cutout_ratio: side of the cut-out square as a fraction of the image side.
    """

    def __init__(
        self,
        policy: str | None = "color,translation,cutout",
        translation_ratio: float = 0.125,
        cutout_ratio: float = 0.5,
    ) -> None:
        super().__init__()
        self.policy = ",".join(parse_policy(policy))
        self.translation_ratio = float(translation_ratio)
        self.cutout_ratio = float(cutout_ratio)
        self._ops = [op for name in parse_policy(policy) for op in AUGMENTATIONS[name]]

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment ``x``; ``generator`` makes the random draws reproducible."""
        if not self._ops:
            return x
        if x.ndim != 4:
            raise ValueError(f"DiffAugment expects [B, C, H, W] images, got {tuple(x.shape)}")
        x = x * 2.0 - 1.0
        for op in self._ops:
            x = op(x, generator, self)
        return (x + 1.0) * 0.5

    def extra_repr(self) -> str:
        return f"policy={self.policy!r}, translation_ratio={self.translation_ratio}, cutout_ratio={self.cutout_ratio}"


def diff_augment(
    x: torch.Tensor,
    policy: str | None = "color,translation,cutout",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Functional form of :class:`DiffAugment` with the default ratios."""
    return DiffAugment(policy)(x, generator=generator)
