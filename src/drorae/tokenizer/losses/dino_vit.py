"""The frozen DINO ViT inside RAE's discriminator, with RAE's numerics (arXiv 2510.11690, its ``DinoDisc``).

RAE does not run DINO as published: its copy uses the tanh approximation of GELU, LayerNorm eps 1e-6,
zeroes the attention's key bias when it loads the weights, always resizes the input to 224 px (bilinear,
no antialias) and takes images in ``[-1, 1]``. Its outputs are the patch tokens after selected blocks, the
last block's first; its final LayerNorm is loaded but never applied. This module computes the same thing, on
the flat state-dict keys of DINO's released ``.pth`` files (``patch_embed.proj.weight``, ``blocks.0.attn.qkv``
...), so RAE's ``dino_vit_small_patch8_224.pth`` loads as it is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...serialization import ForeignFileError, read_state_dict
from ..backbones import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["DINO_RECIPES", "DinoViT", "DinoViTConfig", "read_dino_file"]


@dataclass
class DinoViTConfig:
    """Sizes of the frozen DINO ViT (RAE's ``recipes``: ``S_8`` is what RAE trains with)."""

    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    patch_size: int = 8
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    image_size: int = 224  # RAE resizes every input to this side
    key_depths: list[int] = field(default_factory=lambda: [2, 5, 8, 11])  # 0-based blocks tapped

    def to_dict(self) -> dict:
        return asdict(self)


#: RAE's recipes (its ``disc/dinodisc.py``), by name.
DINO_RECIPES: dict[str, DinoViTConfig] = {
    "S_8": DinoViTConfig(embed_dim=384, num_heads=6, patch_size=8),
    "S_16": DinoViTConfig(embed_dim=384, num_heads=6, patch_size=16),
    "B_16": DinoViTConfig(embed_dim=768, num_heads=12, patch_size=16),
}


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        # softmax(q k^T / sqrt(d)) v, as RAE's slow_attn; SDPA picks the fused kernel
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))  # RAE: tanh GELU (DINO trained with exact)


class _Block(nn.Module):
    def __init__(self, cfg: DinoViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = _Attention(cfg.embed_dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = _Mlp(cfg.embed_dim, round(cfg.embed_dim * cfg.mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, cfg: DinoViTConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoViT(nn.Module):
    """RAE's ``FrozenDINONoDrop``: images in ``[-1, 1]`` -> ``[last block, *key_depths]`` patch tokens ``[B, C, N]``.

    Frozen: no parameter requires a gradient, but inputs do receive gradients through it (the generator's
    GAN gradient flows through the discriminator's feature network).
    """

    def __init__(self, config: DinoViTConfig):
        super().__init__()
        self.config = config
        self.grid = config.image_size // config.patch_size
        self.patch_embed = _PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid**2 + 1, config.embed_dim))
        self.key_depths = sorted({d for d in config.key_depths if d < config.depth})
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.norm_eps)  # in DINO's files; RAE never applies it
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        # [-1, 1] -> ImageNet-normalised in one affine map, with RAE's constants: ((x+1)/2 - m)/s = x*0.5/s + (0.5-m)/s
        self.register_buffer("x_scale", (0.5 / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("x_shift", ((0.5 - mean) / std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> DinoViT:
        return super().train(False)  # frozen: always as at inference

    def forward(self, x: Tensor) -> list[Tensor]:
        side = self.config.image_size
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)  # RAE: always, no antialias
        x = x * self.x_scale.to(x.dtype) + self.x_shift.to(x.dtype)
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1) + self.pos_embed.to(x.dtype)
        taps = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.key_depths:
                taps.append(x[:, 1:].transpose(1, 2))
        return [x[:, 1:].transpose(1, 2), *taps]  # RAE inserts the last block's tokens first


def read_dino_file(path: str | Path, recipe: str = "S_8", key_depths: list[int] | None = None):
    """A DINO ``.pth`` as RAE reads it -> ``(DinoViTConfig, state dict)``, the key bias already zeroed.

    Read with ``weights_only=True``. The sizes come from the recipe (heads are not visible in the weights);
    the file's shapes must agree with it, and its keys must be exactly the ViT's.
    """
    if recipe not in DINO_RECIPES:
        raise ValueError(f"unknown DINO recipe {recipe!r}; expected one of {sorted(DINO_RECIPES)}")
    path = Path(path)
    state = read_state_dict(path)
    config = DinoViTConfig(**DINO_RECIPES[recipe].to_dict())
    if key_depths is not None:
        config.key_depths = list(key_depths)
    if "cls_token" in state and "pos_embed" in state and "patch_embed.proj.weight" in state:
        # depth and width from the file itself, so a tiny or custom DINO of the same layout reads too
        config.embed_dim = int(state["cls_token"].shape[-1])
        config.patch_size = int(state["patch_embed.proj.weight"].shape[-1])
        config.depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        config.mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] / config.embed_dim if config.depth else 4.0
        grid = round((state["pos_embed"].shape[1] - 1) ** 0.5)
        config.image_size = grid * config.patch_size
        if config.embed_dim % config.num_heads:
            raise ValueError(
                f"{path}: width {config.embed_dim} is not divisible by recipe {recipe}'s {config.num_heads} heads"
            )
    model = DinoViT(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ForeignFileError(
            f"{path} is not a DINO ViT weights file of RAE's layout: missing keys {missing[:6]}, "
            f"unexpected keys {unexpected[:6]}"
        )
    wrong = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if wrong:
        k = wrong[0]
        raise ForeignFileError(
            f"{path}: {k} has shape {tuple(state[k].shape)}, recipe expects {tuple(expected[k].shape)}"
        )
    state = {k: v.detach().float().clone() for k, v in state.items()}
    for key, bias in state.items():
        if key.endswith(".attn.qkv.bias"):  # RAE zeroes the key bias (it cancels in softmax anyway)
            c = bias.numel() // 3
            bias[c : 2 * c] = 0
    return config, state
