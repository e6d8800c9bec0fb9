"""DiffAugment: shapes, differentiability, reproducibility and what each op does to pixels (equality with RAE's
DiffAug is in test_rae_discriminator.py)."""

from __future__ import annotations

import pytest
import torch

from drorae.tokenizer.losses import DiffAugment, diff_augment

POLICIES = ["color", "translation", "cutout", "translation,color,cutout", "translation,color"]


def _images(b: int = 4, h: int = 16, w: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("policy", POLICIES)
def test_keeps_shape_and_is_differentiable(policy: str) -> None:
    x = _images().requires_grad_(True)
    y = DiffAugment(policy, cutout=0.25)(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_generator_makes_it_reproducible() -> None:
    x = _images()
    aug = DiffAugment("translation,color,cutout", cutout=0.25)
    a = aug(x, generator=torch.Generator().manual_seed(7))
    b = aug(x, generator=torch.Generator().manual_seed(7))
    c = aug(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_params_are_drawn_per_sample() -> None:
    x = _images(b=1).expand(8, -1, -1, -1)
    y = DiffAugment("translation")(x, generator=torch.Generator().manual_seed(0))
    assert len({tuple(img.flatten().tolist()) for img in y}) > 1


def test_empty_policy_is_identity_and_unknown_op_fails() -> None:
    x = _images()
    for policy in ("", "none", None):
        assert DiffAugment(policy)(x) is x
    assert DiffAugment("translation,color", prob=0.0)(x) is x
    with pytest.raises(ValueError, match="unknown DiffAugment"):
        DiffAugment("color,rotation")
    with pytest.raises(ValueError, match="prob=1.5"):
        DiffAugment("color", prob=1.5)


def _quantised(b: int, seed: int) -> torch.Tensor:
    # Multiples of 1/256 survive the [0,1] <-> [-1,1] round trip exactly.
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, 16, 24), generator=generator) / 256


def test_translation_moves_pixels_and_fills_grey() -> None:
    # Every output pixel is either an input pixel of the same image or the mid-grey fill.
    x = _quantised(b=6, seed=1)
    y = diff_augment(x, "translation", generator=torch.Generator().manual_seed(2))
    for xi, yi in zip(x, y):
        values = set(xi.flatten().tolist()) | {0.5}
        assert set(yi.flatten().tolist()) <= values
    assert not torch.equal(x, y)


def test_cutout_only_greys_out_a_square() -> None:
    x = _quantised(b=6, seed=3)
    y = DiffAugment("cutout", cutout=0.5)(x, generator=torch.Generator().manual_seed(4))
    changed = (y != x).any(dim=1)  # [B, H, W]
    assert torch.all(y.masked_select(changed[:, None].expand_as(y)) == 0.5)
    area = changed.flatten(1).sum(1)
    assert (area > 0).all() and (area <= 8 * 12).all()  # half of each side of 16 x 24


def test_cutout_is_off_by_default_as_in_rae() -> None:
    x = _quantised(b=4, seed=5)
    y = DiffAugment("translation,color,cutout")(x, generator=torch.Generator().manual_seed(6))
    z = DiffAugment("translation,color")(x, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(y, z, rtol=0, atol=0)
