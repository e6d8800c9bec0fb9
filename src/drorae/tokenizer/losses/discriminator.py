"""Discriminators for the adversarial reconstruction loss.

* :class:`DinoFeatureDiscriminator`: a frozen, pretrained ViT (DINO / DINOv2 as a Hugging Face
  ``transformers`` model loaded from a local directory) whose intermediate token features feed
  small trainable heads, in the spirit of the StyleGAN-T / RAE DINO discriminators. The ViT is
  never updated, but it runs inside the autograd graph so the generator receives gradients
  through it.
* :class:`PatchDiscriminator`: a small convolutional PatchGAN trained from scratch, for setups
  without feature-network weights.

Both take images in ``[0, 1]`` and return logits of shape ``[B, M]`` (one logit per token / patch
and hooked block); losses average over them.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ..backbones import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "DISCRIMINATOR_KINDS",
    "DinoFeatureDiscriminator",
    "PatchDiscriminator",
    "build_discriminator",
]

DISCRIMINATOR_KINDS = ("dino", "patch")


class TokenGridHead(nn.Module):
    """Trainable head scoring the patch tokens of one ViT block.

    Tokens are normalised (intermediate residual-stream features are not, and their scale grows
    with depth), laid back on their 2-D patch grid, and scored by a small spectral-normalised
    conv net: 1x1 projection, one residual ``k x k`` conv, 1x1 to one logit per token. Working on
    the grid rather than a flattened token sequence keeps the convolution's neighbourhoods
    spatial.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 256, kernel_size: int = 3) -> None:
        super().__init__()
        self.proj = spectral_norm(nn.Conv2d(in_dim, hidden_dim, kernel_size=1))
        self.mix = spectral_norm(nn.Conv2d(hidden_dim, hidden_dim, kernel_size, padding=kernel_size // 2))
        self.out = spectral_norm(nn.Conv2d(hidden_dim, 1, kernel_size=1))

    def forward(self, tokens: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        """``tokens [B, N, C]`` (patch tokens only) -> logits ``[B, N]``."""
        b, n, c = tokens.shape
        x = F.layer_norm(tokens, (c,))
        x = x.transpose(1, 2).reshape(b, c, *grid_size)
        x = F.leaky_relu(self.proj(x), 0.2)
        x = x + F.leaky_relu(self.mix(x), 0.2)
        return self.out(x).flatten(1)


def _default_hook_layers(num_layers: int, count: int = 4) -> list[int]:
    """``count`` blocks evenly spread over the depth, always including the last one.

    For 12 blocks this gives 3, 6, 9, 12 (1-based block indices).
    """
    count = min(count, num_layers)
    return sorted({round(num_layers * (i + 1) / count) for i in range(count)})


class DinoFeatureDiscriminator(nn.Module):
    """Frozen ViT features + trainable heads.

    Args:
        backbone_path: local directory of a ``transformers`` ViT (``Dinov2Model``,
            ``Dinov2WithRegistersModel``, ``ViTModel`` e.g. ``facebook/dino-vits8``) as written
            by ``save_pretrained``. Nothing is downloaded.
        hook_layers: 1-based indices of the blocks whose outputs are scored (``hidden_states[k]``
            of the model). Default: four blocks spread evenly, the last included.
        input_size: side the images are resized to before the ViT (a multiple of the patch
            size). Default 224, the resolution DINO discriminators are commonly run at.
        head_dim: hidden width of each head.
        head_kernel_size: kernel of the heads' spatial conv.
        mean, std: input normalisation (ImageNet statistics by default).
    """

    def __init__(
        self,
        backbone_path: str | os.PathLike[str],
        hook_layers: Sequence[int] | None = None,
        input_size: int = 224,
        head_dim: int = 256,
        head_kernel_size: int = 3,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.backbone = self._load_backbone(backbone_path)
        config = self.backbone.config
        num_layers = int(config.num_hidden_layers)
        patch_size = int(config.patch_size)
        if input_size % patch_size != 0:
            raise ValueError(f"input_size {input_size} is not a multiple of the patch size {patch_size}")
        if hook_layers is None:
            hook_layers = _default_hook_layers(num_layers)
        hook_layers = list(hook_layers)
        if not hook_layers or any(not 1 <= k <= num_layers for k in hook_layers):
            raise ValueError(f"hook_layers {hook_layers} must lie in 1..{num_layers}")

        self.backbone_path = str(backbone_path)
        self.hook_layers = hook_layers
        self.input_size = int(input_size)
        self.grid_size = (input_size // patch_size, input_size // patch_size)
        self.heads = nn.ModuleList(
            TokenGridHead(int(config.hidden_size), head_dim, head_kernel_size) for _ in hook_layers
        )
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        # ViTModel needs this flag to accept sizes other than its config's; DINOv2 always
        # interpolates and has no such argument.
        self._backbone_kwargs: dict[str, bool] = {"output_hidden_states": True}
        if "interpolate_pos_encoding" in inspect.signature(self.backbone.forward).parameters:
            self._backbone_kwargs["interpolate_pos_encoding"] = True

    @staticmethod
    def _load_backbone(path: str | os.PathLike[str]) -> nn.Module:
        from transformers import AutoModel

        directory = Path(path).expanduser()
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(
                f"DINO discriminator: no transformers model at {directory} (expected a directory "
                f"with config.json and model weights, e.g. from `save_pretrained` or a downloaded "
                f"facebook/dino-vits8 snapshot). Nothing is downloaded at run time; or use "
                f"`discriminator: patch`."
            )
        try:
            model = AutoModel.from_pretrained(str(directory), local_files_only=True)
        except OSError as error:
            raise FileNotFoundError(
                f"DINO discriminator: could not load the model weights in {directory}: {error}"
            ) from error
        model = model.float()
        model.requires_grad_(False)
        return model.eval()

    def train(self, mode: bool = True) -> DinoFeatureDiscriminator:
        super().train(mode)
        # The frozen ViT always runs as at inference (no dropout / drop-path).
        self.backbone.eval()
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The heads' parameters: the only ones an optimiser should see."""
        return self.heads.parameters()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in ``[0, 1]`` -> logits ``[B, len(hook_layers) * N]``."""
        if images.shape[-2:] != (self.input_size, self.input_size):
            images = F.interpolate(
                images,
                size=(self.input_size, self.input_size),
                mode="bilinear",
                align_corners=False,
                antialias=images.shape[-1] > self.input_size,
            )
        pixels = (images - self.mean) / self.std
        hidden_states = self.backbone(pixel_values=pixels, **self._backbone_kwargs).hidden_states
        num_patches = self.grid_size[0] * self.grid_size[1]
        logits = []
        for head, layer in zip(self.heads, self.hook_layers):
            # Drop the prefix tokens (CLS, registers): they sit before the patch tokens.
            tokens = hidden_states[layer][:, -num_patches:]
            logits.append(head(tokens, self.grid_size))
        return torch.cat(logits, dim=1)

    def extra_repr(self) -> str:
        return f"backbone_path={self.backbone_path!r}, hook_layers={self.hook_layers}, input_size={self.input_size}"


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


def build_discriminator(kind: str, **kwargs: object) -> DinoFeatureDiscriminator | PatchDiscriminator:
    """``kind="dino"`` -> :class:`DinoFeatureDiscriminator` (``backbone_path`` required),
    ``kind="patch"`` -> :class:`PatchDiscriminator`; ``kwargs`` go to the constructor."""
    kind = kind.lower()
    if kind == "dino":
        return DinoFeatureDiscriminator(**kwargs)  # type: ignore[arg-type]
    if kind == "patch":
        return PatchDiscriminator(**kwargs)  # type: ignore[arg-type]
    raise ValueError(f"unknown discriminator {kind!r}; expected one of {DISCRIMINATOR_KINDS}")
