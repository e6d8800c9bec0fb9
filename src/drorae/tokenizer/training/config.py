"""The tokenizer's training config: ``model`` (a :class:`~drorae.DRoRAEConfig`), ``data``, ``loss``,
``optim`` and ``train`` sections, from YAML files with ``key=value`` overrides.

The ``model:`` section *is* the tokenizer's config (its ``backbone``, ``decoder`` and ``fusion``
sections are :class:`~drorae.tokenizer.backbones.BackboneConfig`, :class:`~drorae.tokenizer.decoder.DecoderConfig` and
:class:`~drorae.tokenizer.fusion.FusionConfig`); an explicit size that contradicts a preset fails at load time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from ...configuration import ConfigError, apply_preset
from ...engine.config import (
    DataConfig,
    LoopConfig,
    OptimConfig,
    check,
    load_yaml_config,
    to_dict,
    to_yaml,
    validate_run,
)
from ..decoder import DECODER_PRESETS
from ..fusion import FUSION_PRESETS, FusionConfig
from ..model import DRoRAEConfig

__all__ = ["ConfigError", "LossConfig", "TrainConfig", "load_config", "to_yaml", "validate"]


@dataclass
class LossConfig:
    l1_weight: float = 1.0
    mse_weight: float = 0.0  # optional pixel MSE (not in the paper; the CPU demo uses it)
    perceptual: str = "lpips"  # lpips | stlpips | none
    perceptual_weight: float = 1.0
    lpips_vgg_path: str | None = None  # vgg16-397923af.pth
    gan_weight: float = 0.75
    discriminator: str = "dino"  # dino (RAE's DinoDisc) | patch | none | a discriminator directory
    # the "dino" discriminator's weights: RAE's dino_vit_small_patch8_224.pth (a DINO .pth of its layout), or a
    # discriminator directory (drorae import-rae-disc, or a previous run's <out>/discriminator)
    disc_backbone: str | None = None
    disc_recipe: str = "S_8"  # RAE's recipe of the DINO file: S_8 | S_16 | B_16
    disc_key_depths: list[int] = field(default_factory=lambda: [2, 5, 8, 11])  # 0-based blocks tapped, + the last
    disc_ks: int = 9  # kernel of the heads' residual conv (RAE's DINOv2-B_decXL.yaml)
    disc_norm: str = "bn"  # bn | gn
    disc_channels: int = 64  # width of the "patch" discriminator's first layer
    disc_start_step: int = 0
    disc_update_start_step: int = 0
    disc_lr: float = 2e-4
    disc_betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    disc_weight_decay: float = 0.0
    # the discriminator's own cosine schedule, counted in its updates (RAE: 1 epoch of warm-up from zero, to 0.1x
    # at the run's last step): disc_decay_steps = 0 means train.max_steps
    disc_warmup_steps: int = 0
    disc_decay_steps: int = 0
    disc_min_lr_ratio: float = 1.0  # 1.0: constant rate after the warm-up
    diffaug_policy: str = "translation,color"  # RAE's DiffAug: translation, then colour; cutout off
    diffaug_prob: float = 1.0
    diffaug_cutout: float = 0.0
    max_adaptive_weight: float = 1e4


@dataclass
class TokenizerDataConfig(DataConfig):
    crop: str = "center"  # center | random (RAE: shorter side to `resize`, then a random image_size window)
    resize: int = 0  # shorter side before a random crop; 0 = image_size (RAE: 384 for 256 px)


def _default_model() -> DRoRAEConfig:
    # Training adds the fusion module in phase 2 from this section; RAE's decoder noise is on.
    return DRoRAEConfig(fusion=FusionConfig(), noise_tau=0.8)


@dataclass
class TrainConfig:
    model: DRoRAEConfig = field(default_factory=_default_model)
    data: TokenizerDataConfig = field(default_factory=TokenizerDataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)

    def to_dict(self) -> dict:
        return to_dict(self)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Schema + YAML file (+ its ``_base_`` chain) + ``key=value`` overrides, validated."""
    config = load_yaml_config(TrainConfig, path, overrides)
    validate(config)
    return config


def validate(cfg: TrainConfig) -> None:
    """Checks that types alone do not express, each naming its key."""
    m = cfg.model
    check(
        m.backbone.name_or_path is not None or m.backbone.random is not None,
        "model.backbone.name_or_path",
        "set a backbone path / hub id (or model.backbone.random for smoke tests)",
    )
    # presets vs explicit sizes: contradictions fail now, not at phase 2
    apply_preset(replace(m.decoder), "model.decoder", DECODER_PRESETS)
    if m.fusion is not None:
        apply_preset(replace(m.fusion), "model.fusion", FUSION_PRESETS)
        check(0.0 <= m.fusion.beta <= 1.0, "model.fusion.beta", f"{m.fusion.beta} is not in [0, 1]")
    loss = cfg.loss
    check(
        loss.perceptual in ("lpips", "stlpips", "none"),
        "loss.perceptual",
        f"{loss.perceptual!r} is not lpips, stlpips or none",
    )
    check(
        loss.discriminator in ("dino", "patch", "none") or Path(loss.discriminator).expanduser().is_dir(),
        "loss.discriminator",
        f"{loss.discriminator!r} is not dino, patch, none or a discriminator directory (drorae import-rae-disc)",
    )
    check(loss.disc_norm in ("bn", "gn"), "loss.disc_norm", f"{loss.disc_norm!r} is not bn or gn")
    check(len(loss.disc_betas) == 2, "loss.disc_betas", "must be two numbers")
    check(0.0 <= loss.diffaug_prob <= 1.0, "loss.diffaug_prob", f"{loss.diffaug_prob} is not in [0, 1]")
    check(cfg.data.crop in ("center", "random"), "data.crop", f"{cfg.data.crop!r} is not center or random")
    check(
        cfg.data.resize == 0 or cfg.data.resize >= cfg.data.image_size,
        "data.resize",
        f"{cfg.data.resize} is smaller than data.image_size={cfg.data.image_size}",
    )
    validate_run(cfg.optim, cfg.train)
    check(
        cfg.data.image_size % m.decoder.patch_size == 0,
        "data.image_size",
        f"{cfg.data.image_size} is not a multiple of the decoder patch {m.decoder.patch_size}",
    )
