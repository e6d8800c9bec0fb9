"""Differentiable augmentation of discriminator inputs (DiffAugment, Zhao et al., 2020), as RAE applies it.

RAE (arXiv 2510.11690) uses StyleGAN-T's variant: per batch, each of translation, colour and cutout is on
with probability ``prob``; then one ``[7, B]`` draw of uniforms gives every sample its own parameters:

    translation   shift by floor(u0 * (2d + 1)) - d rows and floor(u1 * (2d + 1)) - d columns, d = round(H / 8),
                  reading zero (mid grey) outside the image: out[i, j] = x[i + dy, j + dx]
    colour        x + (u2 - 0.5); grey + (x - grey) * 2 u3; mean + (x - mean) * (u4 + 0.5)
    cutout        a square of side round(H * cutout) centred at (floor(u5 (H + odd)), floor(u6 (W + odd))) zeroed

in that order, in ``[-1, 1]`` space, in float32. RAE trains with ``prob = 1`` and cutout off (``cutout = 0``).
Images here are in ``[0, 1]``: they are mapped to ``[-1, 1]`` and back around the operations. The random
draws are the same calls as RAE's (``rand(3)``, then ``rand(7, B, 1, 1)``), so a seeded generator replays
RAE's augmentation exactly.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["AUGMENTATIONS", "DiffAugment", "diff_augment", "parse_policy"]

#: the operations a policy may switch on; they always run in this order
AUGMENTATIONS = ("translation", "color", "cutout")


def parse_policy(policy: str | None) -> list[str]:
    """``"translation,color"`` -> names; ``""``, ``"none"`` or ``None`` -> empty."""
    if policy is None:
        return []
    names = [p.strip().lower() for p in policy.split(",") if p.strip()]
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown DiffAugment op(s) {unknown}; known: {list(AUGMENTATIONS)}")
    return names


def _translate(x: torch.Tensor, u_h: torch.Tensor, u_w: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    d_h, d_w = round(h * 0.125), round(w * 0.125)  # Python's round, as RAE
    t_h = (u_h.view(b).mul(2 * d_h + 1).floor().long() - d_h).view(b, 1)
    t_w = (u_w.view(b).mul(2 * d_w + 1).floor().long() - d_w).view(b, 1)
    rows = torch.arange(h, device=x.device)[None] + t_h  # [B, H] source row of each output row
    cols = torch.arange(w, device=x.device)[None] + t_w
    inside = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[:, None, None, :]
    out = x.gather(2, rows.clamp(0, h - 1)[:, None, :, None].expand(b, c, h, w))
    out = out.gather(3, cols.clamp(0, w - 1)[:, None, None, :].expand(b, c, h, w))
    return out * inside.to(x.dtype)


def _color(x: torch.Tensor, u_bright: torch.Tensor, u_sat: torch.Tensor, u_con: torch.Tensor) -> torch.Tensor:
    x = x + u_bright.unsqueeze(-1).sub(0.5)  # brightness in [-0.5, 0.5)
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * u_sat.unsqueeze(-1).mul(2) + grey  # saturation in [0, 2)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * u_con.unsqueeze(-1).add(0.5) + mean  # contrast in [0.5, 1.5)


def _cutout(x: torch.Tensor, ratio: float, u_h: torch.Tensor, u_w: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    size_h, size_w = round(h * ratio), round(w * ratio)
    centre_h = u_h.view(b).mul(h + (1 - size_h % 2)).floor().long()
    centre_w = u_w.view(b).mul(w + (1 - size_w % 2)).floor().long()
    # RAE zeroes the clamped index grid, so a square hanging over an edge is squashed onto the border row
    rows = (torch.arange(size_h, device=x.device)[None] + centre_h[:, None] - size_h // 2).clamp(0, h - 1)
    cols = (torch.arange(size_w, device=x.device)[None] + centre_w[:, None] - size_w // 2).clamp(0, w - 1)
    in_rows = torch.zeros(b, h, dtype=torch.bool, device=x.device).scatter_(1, rows, True)
    in_cols = torch.zeros(b, w, dtype=torch.bool, device=x.device).scatter_(1, cols, True)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep.unsqueeze(1).to(x.dtype)


class DiffAugment(nn.Module):
    """RAE's DiffAug on ``[B, C, H, W]`` images in ``[0, 1]`` (float32 out).

    Args:
        policy: which of ``translation,color,cutout`` may run (RAE: ``translation,color``; cutout is off when
            ``cutout=0``). They run in RAE's order whatever the order written.
        prob: per-batch probability of each listed op (RAE: 1).
        cutout: side of the cut-out square as a fraction of the image side.
    """

    def __init__(self, policy: str | None = "translation,color", prob: float = 1.0, cutout: float = 0.0) -> None:
        super().__init__()
        self.ops = set(parse_policy(policy))
        self.policy = ",".join(op for op in AUGMENTATIONS if op in self.ops)
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"DiffAugment prob={prob} is not in [0, 1]")
        self.prob = float(prob)
        self.cutout = float(cutout)
        if "cutout" in self.ops and self.cutout <= 0:
            self.ops.discard("cutout")

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment ``x``; ``generator`` (a CPU one) makes the draws reproducible, else the global RNG."""
        if not self.ops or self.prob <= 0:
            return x
        if x.ndim != 4:
            raise ValueError(f"DiffAugment expects [B, C, H, W] images, got {tuple(x.shape)}")
        on = (torch.rand(3, generator=generator) <= self.prob).tolist()  # per-batch gates, RAE's first draw
        if not any(on):
            return x
        trans, color, cut = (gate and name in self.ops for gate, name in zip(on, AUGMENTATIONS))
        b = x.shape[0]
        device = generator.device if generator is not None else x.device
        u = torch.rand(7, b, 1, 1, generator=generator, device=device).to(x.device)  # drawn as RAE, used or not
        x = x.float() * 2.0 - 1.0
        if trans:
            x = _translate(x, u[0], u[1])
        if color:
            x = _color(x, u[2], u[3], u[4])
        if cut:
            x = _cutout(x, self.cutout, u[5], u[6])
        return (x + 1.0) * 0.5

    def extra_repr(self) -> str:
        return f"policy={self.policy!r}, prob={self.prob}, cutout={self.cutout}"


def diff_augment(
    x: torch.Tensor, policy: str | None = "translation,color", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Functional form of :class:`DiffAugment` (prob 1, cutout off)."""
    return DiffAugment(policy)(x, generator=generator)
