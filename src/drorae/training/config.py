"""Training configuration: typed dataclasses, YAML files, ``key=value`` overrides.

A YAML file may start with ``_base_: other.yaml`` (relative to itself) to inherit and override
another file. The merged result is validated against the dataclasses below by OmegaConf, so an
unknown key or a wrong type fails at start-up with the key's full name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

PHASES = ("1", "2", "3", "joint", "full")


@dataclass
class RandomBackboneConfig:
    """A randomly initialised DINOv2-with-registers (smoke tests and benchmarks only)."""

    hidden_size: int = 64
    num_hidden_layers: int = 4
    num_attention_heads: int = 2
    patch_size: int = 4
    num_register_tokens: int = 4
    seed: int = 0


@dataclass
class FusionSection:
    preset: Optional[str] = None  # "paper-text-29m" (h=1536) or "paper-appendix-a" (h=3072)
    expert_hidden: int = 1536
    beta: float = 0.2
    routing: str = "energy"
    correction: str = "incremental"
    layers: Optional[list[int]] = None  # 1-based blocks; null = all
    activation: str = "gelu"


@dataclass
class DecoderSection:
    preset: Optional[str] = "ViT-XL"  # ViT-B / ViT-L / ViT-XL (RAE); null = the fields below
    hidden_size: int = 1152
    num_layers: int = 28
    num_heads: int = 16
    intermediate_size: int = 4096
    patch_size: int = 16


@dataclass
class ModelSection:
    backbone: Optional[str] = None  # local dir or cached hub id
    random_backbone: Optional[RandomBackboneConfig] = None  # used when backbone is null
    input_size: int = 224
    decoder: DecoderSection = field(default_factory=DecoderSection)
    fusion: FusionSection = field(default_factory=FusionSection)
    noise_tau: float = 0.8  # decoder noise augmentation, phases that train the decoder


@dataclass
class DataSection:
    image_size: int = 256
    random_flip: bool = True
    num_workers: int = 4


@dataclass
class LossSection:
    l1_weight: float = 1.0
    mse_weight: float = 0.0  # optional pixel MSE (not in the paper; the CPU demo uses it)
    perceptual: str = "lpips"  # lpips | stlpips | none
    perceptual_weight: float = 1.0
    lpips_vgg_path: Optional[str] = None  # vgg16-397923af.pth
    gan_weight: float = 0.75
    discriminator: str = "dino"  # dino | patch | none
    disc_backbone: Optional[str] = None  # local DINO ViT dir for the "dino" discriminator
    disc_channels: int = 64  # width of the "patch" discriminator's first layer
    disc_start_step: int = 0
    disc_update_start_step: int = 0
    disc_lr: float = 2e-4
    diffaug_policy: str = "color,translation,cutout"
    max_adaptive_weight: float = 1e4


@dataclass
class OptimSection:
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # 0 disables
    ema_decay: float = 0.9978


@dataclass
class TrainSection:
    batch_size: int = 32  # per rank, per micro-step
    grad_accum: int = 1
    max_steps: int = 1000  # optimizer steps of this phase
    seed: int = 0
    precision: str = "auto"  # auto (bf16 on capable GPUs, fp32 otherwise) | bf16 | fp32
    compile: bool = False
    log_every: int = 50
    image_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    device: str = "auto"  # auto | cpu | cuda
    record_indices: bool = False  # write the dataset indices each rank consumed (checks data sharding)


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)

    def to_dict(self) -> dict:
        return asdict(self)


class ConfigError(ValueError):
    pass


def _load_yaml_chain(path: Path, seen: tuple = ()) -> Any:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config {path} inherits from itself through _base_")
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        node = OmegaConf.load(path)
    except Exception as err:  # yaml syntax errors
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    base = node.pop("_base_", None) if OmegaConf.is_dict(node) else None
    if base is None:
        return node
    return OmegaConf.merge(_load_yaml_chain(path.parent / str(base), seen + (path,)), node)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Schema + YAML file (+ its ``_base_`` chain) + ``key=value`` overrides, validated."""
    schema = OmegaConf.structured(TrainConfig)
    try:
        layers = [schema]
        if path is not None:
            layers.append(_load_yaml_chain(Path(path)))
        if overrides:
            for item in overrides:
                if "=" not in item:
                    raise ConfigError(f"override {item!r} must look like key=value (e.g. train.max_steps=100)")
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*layers)
        config: TrainConfig = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        msg = str(err).splitlines()[0]
        raise ConfigError(f"invalid config key {key!r}: {msg}" if key else f"invalid config: {msg}") from None
    validate(config)
    return config


def validate(cfg: TrainConfig) -> None:
    """Checks that types alone do not express."""
    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"invalid config key {key!r}: {msg}")

    need(cfg.model.backbone is not None or cfg.model.random_backbone is not None, "model.backbone",
         "set a backbone path / hub id (or model.random_backbone for smoke tests)")
    need(cfg.loss.perceptual in ("lpips", "stlpips", "none"), "loss.perceptual", f"{cfg.loss.perceptual!r} is not lpips, stlpips or none")
    need(cfg.loss.discriminator in ("dino", "patch", "none"), "loss.discriminator", f"{cfg.loss.discriminator!r} is not dino, patch or none")
    need(cfg.train.precision in ("auto", "bf16", "fp32"), "train.precision", f"{cfg.train.precision!r} is not auto, bf16 or fp32")
    need(cfg.train.device in ("auto", "cpu", "cuda"), "train.device", f"{cfg.train.device!r} is not auto, cpu or cuda")
    need(cfg.train.batch_size >= 1, "train.batch_size", "must be >= 1")
    need(cfg.train.grad_accum >= 1, "train.grad_accum", "must be >= 1")
    need(cfg.train.max_steps >= 1, "train.max_steps", "must be >= 1")
    need(len(cfg.optim.betas) == 2, "optim.betas", "must be two numbers")
    need(0.0 <= cfg.model.fusion.beta <= 1.0, "model.fusion.beta", f"{cfg.model.fusion.beta} is not in [0, 1]")
    need(cfg.data.image_size % cfg.model.decoder.patch_size == 0, "data.image_size",
         f"{cfg.data.image_size} is not a multiple of the decoder patch {cfg.model.decoder.patch_size}")


def to_yaml(cfg: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
