"""The ViT-MAE-style pixel decoder that RAE uses (its checkpoint key maps live in ``drorae.serialization``).

    tokens [B, N, C] -> Linear(C, D) -> [cls; tokens] + fixed 2-D sin-cos position embedding
                     -> depth x pre-norm Transformer block (SDPA attention, GELU MLP)
                     -> LayerNorm -> Linear(D, p*p*3) -> drop cls -> patches [B, N, p*p*3]

The output is in the backbone's normalised pixel space; the tokenizer un-normalises it.
Numerically this is RAE's decoder (LayerNorm eps 1e-12, exact GELU, trainable cls token, position
embedding not trained), written with a fused qkv projection and ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..configuration import ConfigError, apply_preset, config_from_dict, require
from ..embeddings import sincos_pos_embed_2d

# RAE's decoder sizes (its configs/decoder/ViT{B,L,XL}); the paper uses ViT-XL.
DECODER_PRESETS = {
    "ViT-B": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    "ViT-L": dict(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
    "ViT-XL": dict(hidden_size=1152, num_layers=28, num_heads=16, intermediate_size=4096),
}


@dataclass
class DecoderConfig:
    """The decoder's sizes. ``preset`` fills the four sizes left ``None`` (and rejects a contradicting one);
    ``latent_dim`` and ``num_patches`` come from the backbone when a tokenizer is built from configs."""

    preset: str | None = None  # "ViT-B" / "ViT-L" / "ViT-XL" (RAE); None = the sizes below
    hidden_size: int | None = None  # D
    num_layers: int | None = None
    num_heads: int | None = None
    intermediate_size: int | None = None
    patch_size: int = 16  # decoder patch: 16 x 16 tokens -> 256 x 256 pixels
    latent_dim: int | None = None  # C, the backbone width
    num_patches: int | None = None  # N, the backbone's token count
    num_channels: int = 3
    layer_norm_eps: float = 1e-12
    # None: MAE/RAE positions 0..g-1. An int b: positions scaled by b / g, as diffusers'
    # AutoencoderRAE does (identical to MAE's when g == b == 16, RAE's standard grid).
    pos_embed_base_grid: int | None = None
    # False: the sin-cos table is a fixed buffer (MAE, diffusers). True: it starts as sin-cos and is a parameter that
    # trains with the decoder, as in RAE's stage-1 trainer (its `decoder.requires_grad_(True)` unfreezes it).
    learned_pos_embed: bool = False

    def resolved(self) -> DecoderConfig:
        """A copy with the preset applied and every size checked (what :class:`RAEDecoder` stores)."""
        cfg = replace(self)
        apply_preset(cfg, "decoder", DECODER_PRESETS)
        require(
            cfg,
            "decoder",
            ("hidden_size", "num_layers", "num_heads", "intermediate_size"),
            f"set decoder.preset (one of {sorted(DECODER_PRESETS)}) or all four sizes",
        )
        require(
            cfg,
            "decoder",
            ("latent_dim", "num_patches"),
            "they come from the backbone (build through DRoRAE.from_config)",
        )
        if math.isqrt(cfg.num_patches) ** 2 != cfg.num_patches:
            raise ConfigError(f"decoder.num_patches={cfg.num_patches} must be a perfect square")
        return cfg

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.num_patches)

    @property
    def image_size(self) -> int:
        return self.grid_size * self.patch_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DecoderConfig:
        return config_from_dict(cls, data, "decoder")


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"decoder hidden_size={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DecoderBlock(nn.Module):
    """Pre-norm Transformer block (ViT-MAE layer)."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg.hidden_size, cfg.num_heads)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RAEDecoder(nn.Module):
    """ViT decoder: latent tokens [B, N, C] -> patches [B, N', p*p*3] (normalised pixel space)."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = cfg = config.resolved()
        self.embed = nn.Linear(cfg.latent_dim, cfg.hidden_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))
        table = sincos_pos_embed_2d(cfg.hidden_size, cfg.grid_size, base_grid=cfg.pos_embed_base_grid)[None]
        if cfg.learned_pos_embed:
            self.pos_embed = nn.Parameter(table)
        else:
            self.register_buffer("pos_embed", table, persistent=False)
        self.blocks = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.pred = nn.Linear(cfg.hidden_size, cfg.patch_size**2 * cfg.num_channels)
        self.apply(self._init_weights)
        nn.init.normal_(self.cls_token, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)

    def resample_grid(self, tokens: Tensor) -> Tensor:
        """Bilinearly resample a token grid of another size to the decoder's (as diffusers does)."""
        b, n, c = tokens.shape
        if n == self.config.num_patches:
            return tokens
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"cannot decode {n} tokens: not a square grid")
        g = self.config.grid_size
        grid = tokens.transpose(1, 2).reshape(b, c, side, side)
        grid = F.interpolate(grid, size=(g, g), mode="bilinear", align_corners=False)
        return grid.flatten(2).transpose(1, 2)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.resample_grid(self.embed(tokens))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, 1:]

    def unpatchify(self, patches: Tensor) -> Tensor:
        """[B, N, p*p*c] (pixel order p, q, c within a patch) -> [B, c, H, W]."""
        b, n, _ = patches.shape
        p, c, g = self.config.patch_size, self.config.num_channels, math.isqrt(n)
        x = patches.reshape(b, g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(b, c, g * p, g * p)
