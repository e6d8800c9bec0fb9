"""Adversarial terms, the adaptive weight, the schedule and the composed reconstruction loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from drorae.tokenizer.losses import (
    AdversarialSchedule,
    PatchDiscriminator,
    ReconstructionLoss,
    adaptive_generator_weight,
    generator_loss,
    hinge_d_loss,
)


def test_hinge_d_loss_known_values() -> None:
    """0.5 * (mean relu(1 - real) + mean relu(1 + fake)), RAE's (taming's) hinge."""
    full = torch.full((4, 3), 2.0)
    assert hinge_d_loss(full, -full).item() == 0.0
    zeros = torch.zeros(4, 3)
    assert hinge_d_loss(zeros, zeros).item() == 1.0
    # Only the margin violations count: real 0.5 -> 0.5, fake -3 -> 0; halved.
    assert hinge_d_loss(torch.full((2,), 0.5), torch.full((2,), -3.0)).item() == 0.25


def test_generator_loss_kinds() -> None:
    logits = torch.tensor([1.0, -3.0])
    assert generator_loss(logits).item() == 1.0  # -mean
    expected = F.softplus(-logits).mean()
    assert torch.allclose(generator_loss(logits, "non_saturating"), expected)
    with pytest.raises(ValueError):
        generator_loss(logits, "wasserstein")


def _tiny_problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    weight = nn.Parameter(torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]]))
    x = torch.tensor([0.5, 1.0, -1.0])
    c = torch.tensor([0.1, -0.2])
    out = weight @ x
    rec = 0.5 * out.square().sum()  # d/dW = out x^T
    gan = (c * out).sum()  # d/dW = c x^T
    return weight, x, c, rec, gan


def test_adaptive_weight_matches_hand_computation() -> None:
    weight, x, c, rec, gan = _tiny_problem()
    out = (weight @ x).detach()
    expected = torch.outer(out, x).norm() / (torch.outer(c, x).norm() + 1e-6)  # RAE's eps
    got = adaptive_generator_weight(rec, gan, weight)
    assert torch.allclose(got, expected)
    assert not got.requires_grad
    assert weight.grad is None  # autograd.grad does not accumulate into .grad
    (rec + gan).backward()  # graphs were retained for the real backward


def test_adaptive_weight_is_clamped() -> None:
    weight, _, _, rec, gan = _tiny_problem()
    assert adaptive_generator_weight(rec, gan, weight, max_weight=2.0).item() == 2.0
    weight, _, _, rec, gan = _tiny_problem()
    assert adaptive_generator_weight(rec, 0.0 * gan, weight).item() == 1e4


def test_schedule() -> None:
    schedule = AdversarialSchedule(disc_start_step=10, disc_update_start_step=6)
    assert [schedule.generator_gan_active(s) for s in (0, 9, 10, 11)] == [False, False, True, True]
    assert [schedule.discriminator_active(s) for s in (5, 6, 100)] == [False, True, True]
    with pytest.raises(ValueError):
        AdversarialSchedule(-1, 0)


class CountingDiscriminator(nn.Module):
    """Wraps a discriminator and counts its forward calls."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(images)


class NamedDistance(nn.Module):
    """Stand-in perceptual module (a real one is tested in test_perceptual)."""

    name = "stlpips-vgg"

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x - y).square().mean()


def _decoder_and_batch() -> tuple[nn.Conv2d, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    decoder = nn.Conv2d(4, 3, 3, padding=1)  # stands for the decoder's last layer
    latent = torch.randn(2, 4, 32, 32)
    real = torch.rand(2, 3, 32, 32)
    return decoder, latent, real


def _no_item(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(self: torch.Tensor) -> float:
        raise AssertionError(".item() called: host-device sync in the loss")

    monkeypatch.setattr(torch.Tensor, "item", forbidden)


def test_reconstruction_loss_skips_discriminator_before_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoder, latent, real = _decoder_and_batch()
    disc = CountingDiscriminator(PatchDiscriminator(base_channels=8, num_layers=2))
    loss_fn = ReconstructionLoss(perceptual=NamedDistance(), discriminator=disc, disc_start=5, disc_update_start=3)
    with monkeypatch.context() as patch:
        _no_item(patch)
        losses = loss_fn(real, decoder(latent), decoder.weight, step=4)
    assert disc.calls == 0
    assert set(losses) == {"l1", "stlpips-vgg", "total"}
    assert not loss_fn.gan_active(4) and loss_fn.discriminator_active(3)

    rec = decoder(latent)
    expected = F.l1_loss(rec, real) + (rec - real).square().mean()
    assert torch.allclose(losses["total"], expected)


def test_reconstruction_loss_with_gan(monkeypatch: pytest.MonkeyPatch) -> None:
    decoder, latent, real = _decoder_and_batch()
    disc = CountingDiscriminator(PatchDiscriminator(base_channels=8, num_layers=2))
    loss_fn = ReconstructionLoss(perceptual=NamedDistance(), gan_weight=0.75, discriminator=disc, disc_start=5)
    rec = decoder(latent)
    with monkeypatch.context() as patch:
        _no_item(patch)
        losses = loss_fn(real, rec, decoder.weight, step=5)
    assert disc.calls == 1
    assert set(losses) == {"l1", "stlpips-vgg", "gan_g", "adaptive_weight", "total"}
    assert all(v.ndim == 0 for v in losses.values())
    gan_term = 0.75 * losses["adaptive_weight"] * losses["gan_g"]
    expected = losses["l1"] + losses["stlpips-vgg"] + gan_term
    assert torch.allclose(losses["total"], expected)
    losses["total"].backward()
    assert decoder.weight.grad is not None

    # Discriminator step: fake and real in two forwards (RAE's), gradients reach only D.
    disc.zero_grad(set_to_none=True)
    decoder.zero_grad(set_to_none=True)
    with monkeypatch.context() as patch:
        _no_item(patch)
        d_losses = loss_fn.discriminator_loss(real, decoder(latent))
    assert disc.calls == 3
    assert set(d_losses) == {"d_hinge", "logits_real", "logits_fake", "accuracy", "total"}
    d_losses["total"].backward()
    assert decoder.weight.grad is None
    assert all(p.grad is not None for p in disc.inner.trainable_parameters())


def test_reconstruction_loss_without_autograd_skips_gan() -> None:
    decoder, latent, real = _decoder_and_batch()
    disc = CountingDiscriminator(PatchDiscriminator(base_channels=8, num_layers=2))
    loss_fn = ReconstructionLoss(discriminator=disc, disc_start=0)
    with torch.no_grad():
        losses = loss_fn(real, decoder(latent), decoder.weight, step=10)
    assert disc.calls == 0 and "gan_g" not in losses


def test_reconstruction_loss_needs_last_layer_once_gan_is_on() -> None:
    decoder, latent, real = _decoder_and_batch()
    loss_fn = ReconstructionLoss(discriminator=PatchDiscriminator(base_channels=8, num_layers=2))
    with pytest.raises(ValueError, match="last layer"):
        loss_fn(real, decoder(latent), None, step=0)
