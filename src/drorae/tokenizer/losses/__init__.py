"""Training losses of the tokenizer: perceptual distances, discriminators, DiffAugment and the
composed reconstruction + adversarial objective."""

from .adversarial import (
    GENERATOR_LOSS_KINDS,
    AdversarialSchedule,
    ReconstructionLoss,
    adaptive_generator_weight,
    generator_loss,
    hinge_d_loss,
    quantize_fakes,
)
from .diffaug import DiffAugment, diff_augment
from .dino_vit import DINO_RECIPES, DinoViT, DinoViTConfig, read_dino_file
from .discriminator import (
    DISCRIMINATOR_KINDS,
    DinoDiscriminator,
    DinoDiscriminatorConfig,
    PatchDiscriminator,
    build_discriminator,
    load_discriminator,
)
from .perceptual import (
    LPIPS_VGG16_FILENAME,
    PERCEPTUAL_KINDS,
    LPIPSLoss,
    PerceptualLoss,
    STLPIPSLoss,
    build_perceptual_loss,
)

__all__ = [
    "DISCRIMINATOR_KINDS",
    "GENERATOR_LOSS_KINDS",
    "LPIPS_VGG16_FILENAME",
    "PERCEPTUAL_KINDS",
    "AdversarialSchedule",
    "DiffAugment",
    "DINO_RECIPES",
    "DinoDiscriminator",
    "DinoDiscriminatorConfig",
    "DinoViT",
    "DinoViTConfig",
    "LPIPSLoss",
    "PatchDiscriminator",
    "PerceptualLoss",
    "ReconstructionLoss",
    "STLPIPSLoss",
    "adaptive_generator_weight",
    "build_discriminator",
    "build_perceptual_loss",
    "diff_augment",
    "generator_loss",
    "hinge_d_loss",
    "load_discriminator",
    "quantize_fakes",
    "read_dino_file",
]
