"""Discriminators for the adversarial reconstruction loss.

* :class:`DinoDiscriminator`: RAE's ``DinoDisc`` (arXiv 2510.11690): a frozen DINO ViT
  (:class:`~drorae.tokenizer.losses.dino_vit.DinoViT`, RAE's numerics) whose patch tokens after the last block
  and after each ``key_depths`` block feed one small trainable head each. A head works on the flattened token
  sequence: spectral-normalised Conv1d (k=1) -> per-sample BatchNorm -> LeakyReLU, a residual block of the
  same with kernel ``ks`` and circular padding, scaled by 1/sqrt(2), and a Conv1d to one logit per token.
  Spectral norm is torch's original hook (``weight_orig``/``weight_u``/``weight_v``): the same state-dict
  keys as RAE's checkpoints, and the same power iteration (one per forward in training mode).
* :class:`PatchDiscriminator`: a small convolutional PatchGAN trained from scratch, for setups without
  DINO weights (the CPU demo, tests).

Both take images in ``[0, 1]`` and return logits ``[B, M]``; losses average over them. A trained DINO
discriminator is a directory (``config.json`` + ``model.safetensors``) that :func:`load_discriminator` reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ...serialization import load_safetensors, load_strict, read_json, save_safetensors
from .dino_vit import DinoViT, DinoViTConfig, read_dino_file

__all__ = [
    "DISCRIMINATOR_KINDS",
    "DinoDiscriminator",
    "DinoDiscriminatorConfig",
    "PatchDiscriminator",
    "build_discriminator",
    "load_discriminator",
]

DISCRIMINATOR_KINDS = ("dino", "patch")
WEIGHTS_NAME = "model.safetensors"


@dataclass
class DinoDiscriminatorConfig:
    """RAE's ``gan.disc.arch`` (``ks``, ``norm_type``, ``using_spec_norm``) and the DINO ViT's sizes."""

    dino: DinoViTConfig = field(default_factory=DinoViTConfig)
    ks: int = 9  # RAE's DINOv2-B_decXL.yaml
    norm_type: str = "bn"  # bn: per-sample BatchNorm over tokens | gn: GroupNorm(32)
    using_spec_norm: bool = True
    norm_eps: float = 1e-6

    def to_dict(self) -> dict:
        return {"model_type": "drorae-dino-discriminator", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> DinoDiscriminatorConfig:
        data = {k: v for k, v in data.items() if k != "model_type"}
        return cls(dino=DinoViTConfig(**data.pop("dino", {})), **data)


class BatchNormLocal(nn.Module):
    """Per-sample, per-channel normalisation over the tokens, in float32 (RAE's ``BatchNormLocal``, virtual batch 1)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        mean = x.mean(dim=2, keepdim=True)
        var = x.var(dim=2, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight[:, None] + self.bias[:, None]


class ScaledResidual(nn.Module):
    """``(f(x) + x) / sqrt(2)``: the variance of the sum stays that of ``x``."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.fn(x) + x) * (2.0**-0.5)


def _conv1d(cfg: DinoDiscriminatorConfig, c_in: int, c_out: int, kernel: int) -> nn.Conv1d:
    conv = nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2, padding_mode="circular" if kernel > 1 else "zeros")
    if cfg.using_spec_norm:
        # the original hook, not the parametrization: RAE's keys, and its one power iteration per training forward
        conv = torch.nn.utils.spectral_norm(conv, n_power_iterations=1, eps=1e-12, dim=0)
    return conv


def _conv_norm_act(cfg: DinoDiscriminatorConfig, channels: int, kernel: int) -> nn.Sequential:
    if cfg.norm_type == "bn":
        norm: nn.Module = BatchNormLocal(channels, cfg.norm_eps)
    elif cfg.norm_type == "gn":
        norm = nn.GroupNorm(32, channels, eps=cfg.norm_eps)
    else:
        raise ValueError(f"norm_type {cfg.norm_type!r} is not bn or gn")
    return nn.Sequential(_conv1d(cfg, channels, channels, kernel), norm, nn.LeakyReLU(0.2))


def _head(cfg: DinoDiscriminatorConfig, channels: int) -> nn.Sequential:
    """tokens [B, C, N] -> logits [B, 1, N]; indices as in RAE's ``heads.i.{0,1.fn,2}`` keys."""
    return nn.Sequential(
        _conv_norm_act(cfg, channels, 1),
        ScaledResidual(_conv_norm_act(cfg, channels, cfg.ks)),
        _conv1d(cfg, channels, 1, 1),
    )


class DinoDiscriminator(nn.Module):
    """RAE's DINO discriminator: images ``[B, 3, H, W]`` in ``[0, 1]`` -> logits ``[B, heads * N]``.

    ``dino`` is frozen and always in eval mode; ``heads`` train. In eval mode spectral norm uses its stored
    vectors; in training mode each forward runs one power iteration first (RAE: eval for the generator's
    step, train for the discriminator's).
    """

    def __init__(self, config: DinoDiscriminatorConfig):
        super().__init__()
        self.config = config
        self.dino = DinoViT(config.dino)
        taps = 1 + len(self.dino.key_depths)
        self.heads = nn.ModuleList(_head(config, config.dino.embed_dim) for _ in range(taps))

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return self.heads.parameters()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.dino(images * 2.0 - 1.0)  # RAE's discriminator takes [-1, 1]
        batch = images.shape[0]
        return torch.cat([head(f).view(batch, -1) for head, f in zip(self.heads, features)], dim=1)

    # -- files ----------------------------------------------------------------------------------
    @classmethod
    def from_dino_file(
        cls,
        path: str | Path,
        recipe: str = "S_8",
        key_depths: list[int] | None = None,
        ks: int = 9,
        norm_type: str = "bn",
        using_spec_norm: bool = True,
        norm_eps: float = 1e-6,
        seed: int | None = None,
    ) -> DinoDiscriminator:
        """Fresh heads on the DINO weights of ``path`` (RAE's ``dino_vit_small_patch8_224.pth`` format)."""
        dino, state = read_dino_file(path, recipe, key_depths)
        dino.norm_eps = norm_eps  # RAE passes its norm_eps to the ViT too
        if seed is not None:
            torch.manual_seed(seed)
        model = cls(DinoDiscriminatorConfig(dino, ks, norm_type, using_spec_norm, norm_eps))
        model.dino.load_state_dict(state)
        return model

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_safetensors(self.state_dict(), directory / WEIGHTS_NAME)
        (directory / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")

    def extra_repr(self) -> str:
        c = self.config
        return f"dino={c.dino.embed_dim}x{c.dino.depth}/p{c.dino.patch_size}, taps={len(self.heads)}, ks={c.ks}"


def load_discriminator(directory: str | Path) -> DinoDiscriminator:
    """A discriminator directory (``import-rae-disc`` or a training run's ``discriminator/``) -> the module."""
    directory = Path(directory)
    config = read_json(directory / "config.json", "a drorae discriminator config")
    if config.get("model_type") != "drorae-dino-discriminator":
        raise ValueError(
            f"{directory} is not a drorae discriminator directory (config model_type={config.get('model_type')!r}); "
            "make one with `drorae import-rae-disc`"
        )
    model = DinoDiscriminator(DinoDiscriminatorConfig.from_dict(config))
    load_strict(model, load_safetensors(directory / WEIGHTS_NAME), source=directory / WEIGHTS_NAME)
    return model


class PatchDiscriminator(nn.Module):
    """Convolutional PatchGAN discriminator with spectral norm, trained from scratch.

    ``num_layers`` stride-2 4x4 convolutions (widths doubling from ``base_channels``, capped at
    8x), then a stride-1 4x4 conv and a 4x4 conv to one logit per patch. No batch norm: spectral
    norm alone keeps it Lipschitz-controlled and independent of batch composition.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(num_layers):
            out = base_channels * min(2**i, 8)
            layers += [
                spectral_norm(nn.Conv2d(channels, out, 4, stride=2, padding=1)),
                nn.LeakyReLU(0.2),
            ]
            channels = out
        out = base_channels * min(2**num_layers, 8)
        layers += [
            spectral_norm(nn.Conv2d(channels, out, 4, stride=1, padding=1)),
            nn.LeakyReLU(0.2),
        ]
        layers += [spectral_norm(nn.Conv2d(out, 1, 4, stride=1, padding=1))]
        self.net = nn.Sequential(*layers)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return self.parameters()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` in ``[0, 1]`` -> logits ``[B, num_patches]``."""
        return self.net(images * 2.0 - 1.0).flatten(1)


def build_discriminator(kind: str, **kwargs: object) -> DinoDiscriminator | PatchDiscriminator:
    """``kind="dino"``: :meth:`DinoDiscriminator.from_dino_file` (``path`` = a DINO ``.pth``) or, for a
    directory, :func:`load_discriminator`; ``kind="patch"``: :class:`PatchDiscriminator` (``kwargs`` to it)."""
    kind = kind.lower()
    if kind == "dino":
        path = Path(str(kwargs.pop("path")))
        if path.is_dir():
            if kwargs:
                raise ValueError(
                    f"{path} is a discriminator directory: its settings come from it, not {sorted(kwargs)}"
                )
            return load_discriminator(path)
        return DinoDiscriminator.from_dino_file(path, **kwargs)  # type: ignore[arg-type]
    if kind == "patch":
        return PatchDiscriminator(**kwargs)  # type: ignore[arg-type]
    raise ValueError(f"unknown discriminator {kind!r}; expected one of {DISCRIMINATOR_KINDS}")
