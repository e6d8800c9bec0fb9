"""The ViT-MAE-style pixel decoder that RAE uses, with RAE / diffusers checkpoint key maps.

    tokens [B, N, C] -> Linear(C, D) -> [cls; tokens] + fixed 2-D sin-cos position embedding
                     -> depth x pre-norm Transformer block (SDPA attention, GELU MLP)
                     -> LayerNorm -> Linear(D, p*p*3) -> drop cls -> patches [B, N, p*p*3]

The output is in the backbone's normalised pixel space; the tokenizer un-normalises it.
Numerically this is RAE's decoder (LayerNorm eps 1e-12, exact GELU, trainable cls token, position
embedding not trained), written with a fused qkv projection and ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class DecoderConfig:
    latent_dim: int = 768  # C, the backbone width
    hidden_size: int = 1152  # D
    num_layers: int = 28
    num_heads: int = 16
    intermediate_size: int = 4096
    patch_size: int = 16  # decoder patch: 16 x 16 tokens -> 256 x 256 pixels
    num_patches: int = 256
    num_channels: int = 3
    layer_norm_eps: float = 1e-12
    # None: MAE/RAE positions 0..g-1. An int b: positions scaled by b / g, as diffusers'
    # AutoencoderRAE does (identical to MAE's when g == b == 16, RAE's standard grid).
    pos_embed_base_grid: int | None = None

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.num_patches)

    @property
    def image_size(self) -> int:
        return self.grid_size * self.patch_size

    def to_dict(self) -> dict:
        return asdict(self)


# RAE's decoder sizes (its configs/decoder/ViT{B,L,XL}); the paper uses ViT-XL.
DECODER_PRESETS = {
    "ViT-B": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    "ViT-L": dict(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
    "ViT-XL": dict(hidden_size=1152, num_layers=28, num_heads=16, intermediate_size=4096),
}


def decoder_config_from_preset(preset: str, **overrides) -> DecoderConfig:
    if preset not in DECODER_PRESETS:
        raise ValueError(f"unknown decoder preset {preset!r}; available: {sorted(DECODER_PRESETS)}")
    return DecoderConfig(**{**DECODER_PRESETS[preset], **overrides})


def sincos_pos_embed_2d(dim: int, grid: int, cls_token: bool = True, base_grid: int | None = None) -> Tensor:
    """MAE's fixed 2-D sin-cos embedding [grid*grid (+1), dim]; the cls position is all zeros.

    Half the channels encode the column (x) coordinate and half the row (y), each as
    [sin(pos * omega), cos(pos * omega)] with omega_i = 10000^(-i / (dim/4)).
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim % 4 == 0, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(grid, dtype=torch.float64)
    if base_grid is not None:
        pos = pos * (base_grid / grid)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")

    def embed_1d(pos: Tensor) -> Tensor:
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    emb = torch.cat([embed_1d(cols), embed_1d(rows)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


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

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        if cfg.grid_size**2 != cfg.num_patches:
            raise ValueError(f"decoder num_patches={cfg.num_patches} must be a perfect square")
        self.config = cfg
        self.embed = nn.Linear(cfg.latent_dim, cfg.hidden_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(cfg.hidden_size, cfg.grid_size, base_grid=cfg.pos_embed_base_grid)[None], persistent=False)
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

    @property
    def last_layer(self) -> Tensor:
        """Weight of the last layer, where the adaptive GAN weight compares gradient norms."""
        return self.pred.weight

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


# ---------------------------------------------------------------------------------------------
# Checkpoint key maps: RAE's official decoder (ViT-MAE names) and diffusers' AutoencoderRAE.
# ---------------------------------------------------------------------------------------------

_BLOCK_MAPS = {
    "rae": {
        "attention.attention.query": ("attn.qkv", 0),
        "attention.attention.key": ("attn.qkv", 1),
        "attention.attention.value": ("attn.qkv", 2),
        "attention.output.dense": ("attn.proj", None),
    },
    "diffusers": {
        "attention.to_q": ("attn.qkv", 0),
        "attention.to_k": ("attn.qkv", 1),
        "attention.to_v": ("attn.qkv", 2),
        "attention.to_out.0": ("attn.proj", None),
    },
}
_COMMON_BLOCK_MAP = {
    "layernorm_before": ("norm1", None),
    "layernorm_after": ("norm2", None),
    "intermediate.dense": ("mlp.fc1", None),
    "output.dense": ("mlp.fc2", None),
}
_TOP_MAP = {
    "decoder_embed": "embed",
    "decoder_norm": "norm",
    "decoder_pred": "pred",
}


class CheckpointKeyError(KeyError):
    """A checkpoint's keys do not map one-to-one onto the model (never load random weights quietly)."""

    def __str__(self) -> str:  # KeyError repr-quotes its message; keep it readable
        return str(self.args[0])


def convert_rae_decoder_state_dict(state: dict[str, Tensor], layout: str = "rae") -> dict[str, Tensor]:
    """Map an RAE (``layout="rae"``) or diffusers (``"diffusers"``) decoder state dict to ours.

    Keys may carry a ``decoder.`` prefix. ``decoder_pos_embed`` is fixed (sin-cos) and is dropped
    after a shape check. Raises ``CheckpointKeyError`` naming every key that does not map.
    """
    if layout not in _BLOCK_MAPS:
        raise ValueError(f"layout={layout!r} must be 'rae' or 'diffusers'")
    block_map = {**_BLOCK_MAPS[layout], **_COMMON_BLOCK_MAP}
    out: dict[str, Tensor] = {}
    qkv_parts: dict[str, dict[int, Tensor]] = {}
    unmatched = []
    for key, value in state.items():
        k = key[len("decoder.") :] if key.startswith("decoder.") else key
        if k == "decoder_pos_embed":
            continue  # fixed sin-cos, recomputed (diffusers does not even save it)
        if k == "trainable_cls_token":
            out["cls_token"] = value
            continue
        m = re.fullmatch(r"(decoder_embed|decoder_norm|decoder_pred)\.(weight|bias)", k)
        if m:
            out[f"{_TOP_MAP[m.group(1)]}.{m.group(2)}"] = value
            continue
        m = re.fullmatch(r"decoder_layers\.(\d+)\.(.+)\.(weight|bias)", k)
        if m and m.group(2) in block_map:
            target, slot = block_map[m.group(2)]
            name = f"blocks.{m.group(1)}.{target}.{m.group(3)}"
            if slot is None:
                out[name] = value
            else:
                qkv_parts.setdefault(name, {})[slot] = value
            continue
        unmatched.append(key)
    if unmatched:
        raise CheckpointKeyError(
            f"{len(unmatched)} decoder checkpoint keys do not map onto the {layout} decoder layout: "
            f"{unmatched[:10]}{' ...' if len(unmatched) > 10 else ''}"
        )
    for name, parts in qkv_parts.items():
        if sorted(parts) != [0, 1, 2]:
            raise CheckpointKeyError(f"incomplete q/k/v for {name}: found parts {sorted(parts)}")
        out[name] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    return out


def export_decoder_state_dict(decoder: RAEDecoder, layout: str = "diffusers", prefix: str = "decoder.") -> dict[str, Tensor]:
    """Our decoder's weights under RAE (``"rae"``) or diffusers (``"diffusers"``) key names."""
    if layout not in _BLOCK_MAPS:
        raise ValueError(f"layout={layout!r} must be 'rae' or 'diffusers'")
    inverse = {v: k for k, v in {**_BLOCK_MAPS[layout], **_COMMON_BLOCK_MAP}.items()}
    top_inverse = {v: k for k, v in _TOP_MAP.items()}
    out: dict[str, Tensor] = {}
    for name, value in decoder.state_dict().items():
        value = value.detach().contiguous()
        if name == "cls_token":
            out[prefix + "trainable_cls_token"] = value
            continue
        m = re.fullmatch(r"(embed|norm|pred)\.(weight|bias)", name)
        if m:
            out[f"{prefix}{top_inverse[m.group(1)]}.{m.group(2)}"] = value
            continue
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", name)
        i, target, kind = m.group(1), m.group(2), m.group(3)
        if target == "attn.qkv":
            for slot, chunk in enumerate(value.chunk(3, dim=0)):
                out[f"{prefix}decoder_layers.{i}.{inverse[(target, slot)]}.{kind}"] = chunk.contiguous()
        else:
            out[f"{prefix}decoder_layers.{i}.{inverse[(target, None)]}.{kind}"] = value
    return out


def infer_decoder_config(state: dict[str, Tensor], latent_dim: int | None = None, num_patches: int | None = None,
                         num_heads: int | None = None) -> DecoderConfig:
    """Read a DecoderConfig off an RAE/diffusers decoder state dict (heads come from the presets)."""
    def get(suffix: str) -> Tensor:
        for k, v in state.items():
            if k.endswith(suffix):
                return v
        raise CheckpointKeyError(f"decoder checkpoint has no key ending in {suffix!r}")

    embed = get("decoder_embed.weight")
    hidden, c = embed.shape
    if latent_dim is not None and latent_dim != c:
        raise ValueError(f"decoder checkpoint expects latent width {c}, but the backbone width is {latent_dim}")
    depth = 1 + max(int(m.group(1)) for k in state for m in [re.search(r"decoder_layers\.(\d+)\.", k)] if m)
    inter = next(v for k, v in state.items() if re.search(r"decoder_layers\.0\.intermediate\.dense\.weight$", k)).shape[0]
    pred_out = get("decoder_pred.weight").shape[0]
    patch = math.isqrt(pred_out // 3)
    pos = next((v for k, v in state.items() if k.endswith("decoder_pos_embed")), None)
    if pos is not None:
        num_patches = pos.shape[-2] - 1
    if num_patches is None:
        raise ValueError("decoder checkpoint has no decoder_pos_embed: pass num_patches (the backbone token count)")
    if num_heads is None:
        matches = [p["num_heads"] for p in DECODER_PRESETS.values() if p["hidden_size"] == hidden]
        if not matches:
            raise ValueError(f"cannot infer the head count of a decoder with width {hidden}: pass num_heads")
        num_heads = matches[0]
    return DecoderConfig(latent_dim=c, hidden_size=hidden, num_layers=depth, num_heads=num_heads,
                         intermediate_size=inter, patch_size=patch, num_patches=num_patches)
