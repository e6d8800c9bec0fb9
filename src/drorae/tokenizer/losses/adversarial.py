"""Adversarial terms and the composed reconstruction loss of all three training phases (RAE's stage-1 loss,
paper eq. 6):

    generator step:      L = l1_w * L1 + p_w * P + gan_w * lambda * L_G,  L_G = -mean D(aug(x_hat))   (D in eval mode)
    lambda             = ||d(l1_w * L1 + p_w * P)/dw|| / (||d L_G/dw|| + 1e-6), clamped to [0, 1e4]   (Esser et al.)
    discriminator step:  L_D = 0.5 * (mean relu(1 - D(aug(x))) + mean relu(1 + D(aug(q(x_hat')))))  (D in train mode)

where ``w`` is the weight of the decoder's last layer, ``P`` a frozen perceptual distance, ``aug`` DiffAugment,
``x_hat'`` the reconstruction by the *updated* decoder without latent noise and ``q`` clamping to [0, 1] and
rounding to 8 bits (:func:`quantize_fakes`), all as RAE's ``train_stage1.py`` computes them. Nothing here calls
``.item()``: all logged values stay tensors on the device, so the training loop decides when to synchronise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .diffaug import DiffAugment

__all__ = [
    "GENERATOR_LOSS_KINDS",
    "AdversarialSchedule",
    "ReconstructionLoss",
    "adaptive_generator_weight",
    "generator_loss",
    "hinge_d_loss",
    "quantize_fakes",
]


GENERATOR_LOSS_KINDS = ("hinge", "non_saturating")


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge discriminator loss ``0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(G(z)))])`` (taming-transformers, RAE)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def quantize_fakes(images: torch.Tensor) -> torch.Tensor:
    """What RAE's discriminator learns on: the reconstruction clamped to [0, 1] and rounded to 8-bit levels
    (``round((x + 1) * 127.5) / 127.5 - 1`` in RAE's [-1, 1] convention), as a saved image would be."""
    return torch.round(images.detach().clamp(0.0, 1.0) * 255.0) / 255.0


def generator_loss(logits_fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Adversarial loss of the generator.

    ``kind="hinge"`` (default): ``-E[D(G(z))]``, the generator loss paired with a hinge
    discriminator in taming-transformers, StyleGAN-T and RAE (named "vanilla" in taming's code).
    It never saturates for a hinge-trained D, whose logits are not probabilities.
    ``kind="non_saturating"``: ``E[softplus(-D(G(z)))]`` = ``-E[log sigmoid(D(G(z)))]``
    (Goodfellow et al.), for a logistic discriminator.
    """
    if kind == "hinge":
        return -logits_fake.mean()
    if kind == "non_saturating":
        return F.softplus(-logits_fake).mean()
    raise ValueError(f"unknown generator loss {kind!r}; expected one of {GENERATOR_LOSS_KINDS}")


def adaptive_generator_weight(
    rec_loss: torch.Tensor,
    gan_loss: torch.Tensor,
    last_layer_weight: torch.Tensor,
    max_weight: float = 1e4,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Balance the GAN gradient against the reconstruction gradient (Esser et al., 2021).

    ``lambda = ||d rec / d w|| / (||d gan / d w|| + eps)`` on the last layer's weight ``w``,
    clamped to ``[0, max_weight]`` and detached (it is a scale, not a loss term). Both losses'
    graphs are kept (``retain_graph=True``) for the real backward pass that follows.
    """
    (rec_grad,) = torch.autograd.grad(rec_loss, last_layer_weight, retain_graph=True)
    (gan_grad,) = torch.autograd.grad(gan_loss, last_layer_weight, retain_graph=True)
    # Norms in float32: bf16/fp16 gradients would make the ratio noisy.
    weight = torch.linalg.vector_norm(rec_grad.float()) / (torch.linalg.vector_norm(gan_grad.float()) + eps)
    return weight.clamp(0.0, max_weight).detach()


@dataclass(frozen=True)
class AdversarialSchedule:
    """When the adversarial game is on, by global optimiser step (0-based).

    Args:
        disc_start_step: first step at which the generator receives the GAN term.
        disc_update_start_step: first step at which the discriminator is trained. It is usually
            earlier than ``disc_start_step`` (RAE: epoch 6 vs 8 of 16), so the generator only
            faces a discriminator that has already learned something.
    """

    disc_start_step: int = 0
    disc_update_start_step: int = 0

    def __post_init__(self) -> None:
        if self.disc_start_step < 0 or self.disc_update_start_step < 0:
            raise ValueError("schedule steps must be >= 0")

    def generator_gan_active(self, step: int) -> bool:
        """Does the generator loss include the GAN term at ``step``?"""
        return step >= self.disc_start_step

    def discriminator_active(self, step: int) -> bool:
        """Is the discriminator updated at ``step``?"""
        return step >= self.disc_update_start_step


class ReconstructionLoss(nn.Module):
    """L1 + perceptual + adaptively weighted GAN loss, and the matching discriminator loss.

    Args:
        l1_weight: weight of the pixel L1 term.
        perceptual: a frozen perceptual module (see :func:`~drorae.tokenizer.losses.build_perceptual_loss`)
            with a ``name`` attribute, or ``None``.
        perceptual_weight: weight of the perceptual term (0 skips computing it).
        gan_weight: weight of the adaptively scaled GAN term (0 disables the GAN).
        discriminator: module mapping images in ``[0, 1]`` to logits, or ``None`` (no GAN).
        diffaug_policy: DiffAugment ops applied to every discriminator input (RAE: translation,color).
        diffaug_prob: per-batch probability of each op (RAE: 1).
        diffaug_cutout: cutout square side as a fraction of the image (RAE: 0, off).
        disc_start: first step with the GAN term in the generator loss.
        disc_update_start: first step at which the discriminator is trained.
        max_adaptive_weight: clamp of the adaptive weight.
        generator_loss_kind: see :func:`generator_loss`.
        mse_weight: weight of an optional pixel MSE term (0 = off, the paper's objective).

    The caller owns the optimisers: generator step ``loss(real, rec, last_layer_weight, step)
    ["total"].backward()``, then, if ``loss.schedule.discriminator_active(step)``, zero the
    discriminator's gradients (the generator step also reaches them) and backpropagate
    ``loss.discriminator_loss(real, rec)["total"]``.
    """

    def __init__(
        self,
        l1_weight: float = 1.0,
        perceptual: nn.Module | None = None,
        perceptual_weight: float = 1.0,
        gan_weight: float = 0.75,
        discriminator: nn.Module | None = None,
        diffaug_policy: str | None = "translation,color",
        diffaug_prob: float = 1.0,
        diffaug_cutout: float = 0.0,
        disc_start: int = 0,
        disc_update_start: int = 0,
        max_adaptive_weight: float = 1e4,
        generator_loss_kind: str = "hinge",
        mse_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if generator_loss_kind not in GENERATOR_LOSS_KINDS:
            raise ValueError(f"generator_loss_kind must be one of {GENERATOR_LOSS_KINDS}")
        self.l1_weight = float(l1_weight)
        self.mse_weight = float(mse_weight)
        self.perceptual = perceptual
        self.perceptual_weight = float(perceptual_weight)
        self.gan_weight = float(gan_weight)
        self.discriminator = discriminator
        self.augment = DiffAugment(diffaug_policy, diffaug_prob, diffaug_cutout)
        self.schedule = AdversarialSchedule(disc_start, disc_update_start)
        self.max_adaptive_weight = float(max_adaptive_weight)
        self.generator_loss_kind = generator_loss_kind

    @property
    def perceptual_name(self) -> str | None:
        if self.perceptual is None:
            return None
        return getattr(self.perceptual, "name", "perceptual")

    @property
    def has_gan(self) -> bool:
        return self.discriminator is not None and self.gan_weight > 0

    def gan_active(self, step: int) -> bool:
        """Whether the generator step at ``step`` runs the discriminator."""
        return self.has_gan and self.schedule.generator_gan_active(step)

    def discriminator_active(self, step: int) -> bool:
        """Whether the discriminator should be trained at ``step``."""
        return self.has_gan and self.schedule.discriminator_active(step)

    def forward(
        self,
        real: torch.Tensor,
        reconstruction: torch.Tensor,
        last_layer_weight: torch.Tensor | None = None,
        step: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Generator loss.

        Args:
            real: target images ``[B, 3, H, W]`` in ``[0, 1]``.
            reconstruction: decoder output, same shape (not clamped: clamping kills gradients).
            last_layer_weight: weight of the decoder's last layer, needed once the GAN is on.
            step: global optimiser step, for the schedule.

        Returns:
            Scalar tensors: ``"l1"``, the perceptual module's name (e.g. ``"lpips-vgg"``) when
            used, ``"gan_g"`` and ``"adaptive_weight"`` when the GAN term is on, and ``"total"``.
            The discriminator is not run at all while the GAN term is off, nor without autograd
            (evaluation), where the adaptive weight is undefined.
        """
        losses: dict[str, torch.Tensor] = {}
        l1 = F.l1_loss(reconstruction.float(), real.float())
        losses["l1"] = l1
        rec_loss = self.l1_weight * l1
        if self.mse_weight > 0:  # optional; the paper's objective is L1 + LPIPS + GAN
            mse = F.mse_loss(reconstruction.float(), real.float())
            losses["mse"] = mse
            rec_loss = rec_loss + self.mse_weight * mse
        if self.perceptual is not None and self.perceptual_weight > 0:
            perceptual = self.perceptual(reconstruction, real)
            losses[self.perceptual_name] = perceptual
            rec_loss = rec_loss + self.perceptual_weight * perceptual
        total = rec_loss

        if self.gan_active(step) and torch.is_grad_enabled():
            if last_layer_weight is None:
                raise ValueError("the GAN term is on: pass the decoder's last layer weight")
            with _mode(self.discriminator, training=False):  # RAE: no power iteration in the generator's step
                logits_fake = self.discriminator(self.augment(reconstruction))
            gan_g = generator_loss(logits_fake.float(), self.generator_loss_kind)
            adaptive = adaptive_generator_weight(
                rec_loss, gan_g, last_layer_weight, max_weight=self.max_adaptive_weight
            )
            losses["gan_g"] = gan_g
            losses["adaptive_weight"] = adaptive
            total = total + self.gan_weight * adaptive * gan_g

        losses["total"] = total
        return losses

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """Hinge loss of the discriminator (in training mode) on augmented real and generated images.

        ``fake``: what D should learn to reject, usually :func:`quantize_fakes` of a fresh reconstruction.
        Fake and real go through D in two forwards, fake first, as RAE's: each runs its own augmentation
        draw and, in training mode, its own spectral-norm power iteration. Returns scalar tensors
        ``"d_hinge"`` (= ``"total"``), ``"logits_real"``, ``"logits_fake"`` (mean logits, detached) and
        ``"accuracy"`` (fraction of logits where real scores above fake).
        """
        if self.discriminator is None:
            raise RuntimeError("ReconstructionLoss has no discriminator")
        with _mode(self.discriminator, training=True):
            logits_fake = self.discriminator(self.augment(fake.detach())).float()
            logits_real = self.discriminator(self.augment(real.detach())).float()
        d_loss = hinge_d_loss(logits_real, logits_fake)
        return {
            "d_hinge": d_loss,
            "logits_real": logits_real.detach().mean(),
            "logits_fake": logits_fake.detach().mean(),
            "accuracy": (logits_real.detach() > logits_fake.detach()).float().mean(),
            "total": d_loss,
        }


class _mode:
    """Run a module in training or eval mode for a block, then restore its mode."""

    def __init__(self, module: nn.Module, training: bool):
        self.module, self.training = module, training

    def __enter__(self) -> None:
        self.previous = self.module.training
        self.module.train(self.training)

    def __exit__(self, *exc: object) -> None:
        self.module.train(self.previous)
