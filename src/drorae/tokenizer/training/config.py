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
    discriminator: str = "dino"  # dino | patch | none
    disc_backbone: str | None = None  # local DINO ViT dir for the "dino" discriminator
    disc_channels: int = 64  # width of the "patch" discriminator's first layer
    disc_start_step: int = 0
    disc_update_start_step: int = 0
    disc_lr: float = 2e-4
    diffaug_policy: str = "color,translation,cutout"
    max_adaptive_weight: float = 1e4


def _default_model() -> DRoRAEConfig:
    # Training adds the fusion module in phase 2 from this section; RAE's decoder noise is on.
    return DRoRAEConfig(fusion=FusionConfig(), noise_tau=0.8)


@dataclass
class TrainConfig:
    model: DRoRAEConfig = field(default_factory=_default_model)
    data: DataConfig = field(default_factory=DataConfig)
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
        loss.discriminator in ("dino", "patch", "none"),
        "loss.discriminator",
        f"{loss.discriminator!r} is not dino, patch or none",
    )
    validate_run(cfg.optim, cfg.train)
    check(
        cfg.data.image_size % m.decoder.patch_size == 0,
        "data.image_size",
        f"{cfg.data.image_size} is not a multiple of the decoder patch {m.decoder.patch_size}",
    )
