"""The stage-2 network: DiT^DH (a DiT trunk + a wide, shallow head) and plain DiT, on a tokenizer's latent.

Paper section 4.2 / appendix A (arXiv 2605.10780) trains DiT^DH-XL, RAE's network (arXiv 2510.11690,
``DiTwDDTHead``), on the 16x16x768 latent; with a head this module computes exactly that function, and
without one RAE's ``LightningDiT`` (checked against fixtures made by RAE's own code). Shapes for the latent
``x_t [B, C, H, W]`` (C = 768, H = W = 16 for DINOv2-B at 224 px), patch ``p`` (1 for DiT^DH),
``N = (H / p) (W / p)`` tokens, trunk width D, head width D_head:

    e      = t_emb(t) + y_emb(y)                            [B, D]    t: Gaussian-Fourier features -> MLP
    c      = SiLU(e)   (DiT^DH)  |  e   (plain DiT)         [B, D]    (i)
    h      = x_embed(x_t) + pos_2d                          [B, N, D] trunk: fixed 2-D sin-cos positions
    h      = trunk blocks(h, c)                             [B, N, D] every block: RMSNorm, RoPE-2D, SDPA, SwiGLU
    s      = proj(SiLU(t_emb(t) + h))                       [B, N, D_head]   (ii) per-token condition of the head
    g      = head_embed(x_t)                                [B, N, D_head]   the head re-embeds x_t (no abs. pos.)
    g      = head blocks(g, s)                              [B, N, D_head]
    v      = Linear(modulate(RMSNorm(g), s)) -> unpatchify  [B, C, H, W]     the predicted velocity

Every modulation is adaLN-Zero: ``Linear(SiLU(cond))`` (iii). With (i) and (ii) the DiT^DH's conditions are
already SiLU-activated, so they pass through SiLU twice: that is RAE's network as trained and released, not
a slip here; plain DiT (``head_depth = 0``) applies its single SiLU in (iii) and the final layer to the trunk
output with ``c``. adaLN modulations and the final linear layer start at zero, so a fresh model outputs 0.

Free guidance (RAEv2, arXiv 2605.18324; optional, ``guidance_head_block = k``): a second output layer on the
trunk's tokens after block k predicts the clean latent,

    x_hat_base = Linear(modulate(RMSNorm(u), u)) -> unpatchify,   u = SiLU(t_emb(t) + h_k)     [B, C, H, W]

(RAEv2's ``DiTwDDTHeadIG``: the same SiLU'd tokens are the layer's input and its per-token condition, zero-init);
it costs one small layer in the same forward, no second network. Without it the network and its state dict are
exactly the ones above.

Labels: ``num_classes`` rows plus one null row (index ``num_classes``) for classifier-free guidance; the
trainer drops labels to the null class, the model never does (its forward is deterministic).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..configuration import ConfigError, apply_preset, config_from_dict, require
from ..embeddings import sincos_pos_embed_2d
from ..serialization import load_safetensors, load_strict, model_dir, read_json, save_safetensors

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# 2: RAE's function (drorae >= 0.3). 1 (unmarked, drorae 0.2): bare adaLN linears, row-first positions and 128
# Fourier frequencies, a different network whose weights do not carry over.
DIT_FORMAT = 2

_HEAD = dict(head_hidden_size=2048, head_depth=2, head_num_heads=16)
# Trunk sizes are DiT's (S/B/L/XL); DiT^DH adds RAE's wide head; "tiny" runs on a laptop CPU.
DIT_PRESETS = {
    "DiTDH-S": dict(hidden_size=384, depth=12, num_heads=6, **_HEAD),
    "DiTDH-B": dict(hidden_size=768, depth=12, num_heads=12, **_HEAD),
    "DiTDH-L": dict(hidden_size=1024, depth=24, num_heads=16, **_HEAD),
    "DiTDH-XL": dict(hidden_size=1152, depth=28, num_heads=16, **_HEAD),
    "DiT-S": dict(hidden_size=384, depth=12, num_heads=6, head_hidden_size=0, head_depth=0, head_num_heads=0),
    "DiT-B": dict(hidden_size=768, depth=12, num_heads=12, head_hidden_size=0, head_depth=0, head_num_heads=0),
    "DiT-L": dict(hidden_size=1024, depth=24, num_heads=16, head_hidden_size=0, head_depth=0, head_num_heads=0),
    "DiT-XL": dict(hidden_size=1152, depth=28, num_heads=16, head_hidden_size=0, head_depth=0, head_num_heads=0),
    # the DiT paper's network (arch "dit"): DiT-XL/2 = this at patch_size 2 (675M parameters with its learned sigma)
    "DiT-paper-XL": dict(
        hidden_size=1152, depth=28, num_heads=16, head_hidden_size=0, head_depth=0, head_num_heads=0, arch="dit"
    ),
    "DiTDH-tiny": dict(hidden_size=64, depth=3, num_heads=4, head_hidden_size=128, head_depth=1, head_num_heads=4),
    "DiT-tiny": dict(hidden_size=64, depth=3, num_heads=4, head_hidden_size=0, head_depth=0, head_num_heads=0),
}


@dataclass
class DiTConfig:
    """A DiT^DH (``head_depth > 0``) or plain DiT. ``preset`` fills the sizes left ``None``; the latent's
    shape (``in_channels``, ``input_size``) comes from the tokenizer the network is trained on."""

    preset: str | None = None
    hidden_size: int | None = None  # trunk width D
    depth: int | None = None
    num_heads: int | None = None
    head_hidden_size: int | None = None  # D_head (0 with head_depth 0: plain DiT)
    head_depth: int | None = None
    head_num_heads: int | None = None
    in_channels: int | None = None  # latent channels C
    input_size: int | None = None  # latent side H = W
    patch_size: int = 1
    out_channels: int | None = None  # default: in_channels (a velocity)
    num_classes: int | None = None  # from the data's class folders (ImageNet: 1000); + 1 null row for CFG
    mlp_ratio: float = 4.0  # SwiGLU hidden = int(2/3 * mlp_ratio * D)
    frequency_size: int = 256  # Gaussian-Fourier frequencies of t (W has this many; 2x as many features)
    fourier_scale: float = 1.0  # W ~ N(0, fourier_scale^2)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    guidance_head_block: int | None = None  # free guidance: trunk block (1-based) feeding the x-prediction head
    # "lightning": RAE's blocks (RMSNorm, RoPE-2D, SwiGLU, Gaussian-Fourier t); "dit": the DiT paper's (Peebles & Xie,
    # facebookresearch/DiT: LayerNorm without affine, no RoPE, GELU(tanh) MLP, sinusoidal t with 256 frequencies)
    arch: str | None = None  # None: "lightning"

    def resolved(self) -> DiTConfig:
        cfg = replace(self)
        apply_preset(cfg, "dit", DIT_PRESETS)
        require(
            cfg,
            "dit",
            ("hidden_size", "depth", "num_heads", "head_hidden_size", "head_depth", "head_num_heads"),
            f"set dit.preset (one of {sorted(DIT_PRESETS)}) or every size",
        )
        require(cfg, "dit", ("in_channels", "input_size"), "they come from the tokenizer's latent [C, H, W]")
        require(cfg, "dit", ("num_classes",), "it comes from the data's class folders")
        if cfg.out_channels is None:
            cfg.out_channels = cfg.in_channels
        if cfg.input_size % cfg.patch_size:
            raise ConfigError(f"dit.input_size={cfg.input_size} is not a multiple of dit.patch_size={cfg.patch_size}")
        for width, heads, key in (
            (cfg.hidden_size, cfg.num_heads, "num_heads"),
            (cfg.head_hidden_size, cfg.head_num_heads, "head_num_heads"),
        ):
            if heads and (width % heads or (width // heads) % 4):
                raise ConfigError(
                    f"dit.{key}={heads}: the width {width} must split into heads whose size is a multiple of 4 "
                    "(2-D RoPE rotates pairs along two axes)"
                )
        cfg.arch = cfg.arch or "lightning"
        if cfg.arch not in ("lightning", "dit"):
            raise ConfigError(f"dit.arch={cfg.arch!r} is not 'lightning' (RAE's blocks) or 'dit' (the DiT paper's)")
        if cfg.arch == "dit" and (cfg.head_depth or cfg.guidance_head_block is not None):
            raise ConfigError("dit.arch='dit' (the DiT paper's network) has no DDT head nor free-guidance head")
        if cfg.head_depth and not cfg.head_hidden_size:
            raise ConfigError("dit.head_depth > 0 needs dit.head_hidden_size > 0")
        k = cfg.guidance_head_block
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= cfg.depth):
            raise ConfigError(f"dit.guidance_head_block={k!r} must be a trunk block in 1..{cfg.depth} (or null)")
        return cfg

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    def to_dict(self) -> dict:
        return {"_class_name": "DiT", "_dit_format": DIT_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> DiTConfig:
        return config_from_dict(cls, data, "dit")


# -- building blocks ----------------------------------------------------------------------------------------------


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: ``x * (1 + scale) + shift``; shift/scale are [B, D] (global) or [B, N, D] (per token)."""
    if shift.ndim == 2:
        shift, scale = shift.unsqueeze(1), scale.unsqueeze(1)
    return x * (1 + scale) + shift


def _gate(gate: Tensor) -> Tensor:
    return gate.unsqueeze(1) if gate.ndim == 2 else gate


class Rope2D(nn.Module):
    """2-D rotary position embedding: the first half of a head's channels rotate with the row, the second
    half with the column; pairs ``(2i, 2i + 1)`` rotate by ``pos * theta^(-4i / head_dim)``."""

    def __init__(self, head_dim: int, grid: int, theta: float = 10000.0):
        super().__init__()
        quarter = head_dim // 4
        freqs = theta ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
        coords = torch.arange(grid, dtype=torch.float64)
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        angles = torch.cat([yy.reshape(-1, 1) * freqs, xx.reshape(-1, 1) * freqs], dim=1)  # [N, head_dim / 2]
        angles = angles.repeat_interleave(2, dim=1)  # each angle for its channel pair
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, heads, N, head_dim] -> rotated, same shape."""
        pairs = x.unflatten(-1, (-1, 2))
        rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
        return x * self.cos.to(x.dtype) + rotated * self.sin.to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention: fused qkv (with bias), RoPE-2D on q and k, SDPA."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: Rope2D) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = rope(q), rope(k)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class SwiGLU(nn.Module):
    """``W3 (SiLU(W1 x) * W2 x)`` with hidden width ``int(2/3 * mlp_ratio * D)`` (equal parameters to a 4x GELU MLP)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


def ada_ln(dim: int, chunks: int) -> nn.Sequential:
    """adaLN modulations ``Linear(SiLU(cond))`` (iii): ``chunks`` vectors of width ``dim`` from a condition as wide."""
    return nn.Sequential(nn.SiLU(), nn.Linear(dim, chunks * dim))


class GeluMLP(nn.Module):
    """The DiT paper's MLP (timm's ``Mlp`` with tanh-approximated GELU): ``fc2(GELU(fc1 x))``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def _norm(dim: int, eps: float, arch: str) -> nn.Module:
    return nn.LayerNorm(dim, elementwise_affine=False, eps=eps) if arch == "dit" else nn.RMSNorm(dim, eps=eps)


class DiTBlock(nn.Module):
    """adaLN-Zero block: ``x += g1 * Attn(mod(RMSNorm(x), a1, b1)); x += g2 * MLP(mod(RMSNorm(x), a2, b2))``,
    the six modulations ``Linear(SiLU(cond))`` in the order shift, scale, gate (attention), shift, scale, gate (MLP)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float, arch: str = "lightning"):
        super().__init__()
        self.norm1 = _norm(dim, eps, arch)
        self.attn = Attention(dim, num_heads)
        self.norm2 = _norm(dim, eps, arch)
        self.mlp = GeluMLP(dim, int(dim * mlp_ratio)) if arch == "dit" else SwiGLU(dim, int(2 / 3 * mlp_ratio * dim))
        self.adaLN_modulation = ada_ln(dim, 6)

    def forward(self, x: Tensor, cond: Tensor, rope: Rope2D) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(cond).chunk(6, dim=-1)
        x = x + _gate(gate1) * self.attn(modulate(self.norm1(x), shift1, scale1), rope)
        return x + _gate(gate2) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """``Linear(mod(RMSNorm(x), shift, scale))`` -> patch values [B, N, p*p*C]."""

    def __init__(self, dim: int, patch: int, out_channels: int, eps: float, arch: str = "lightning"):
        super().__init__()
        self.norm = _norm(dim, eps, arch)
        self.adaLN_modulation = ada_ln(dim, 2)
        self.linear = nn.Linear(dim, patch * patch * out_channels)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(cond).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class GaussianFourierTimeEmbedding(nn.Module):
    """Continuous ``t`` in [0, 1] -> ``[sin(2 pi t W), cos(2 pi t W)]`` (fixed ``W ~ N(0, scale^2)`` with
    ``frequency_size`` entries, so ``2 * frequency_size`` features) -> MLP."""

    def __init__(self, dim: int, frequency_size: int, scale: float):
        super().__init__()
        self.register_buffer("W", torch.randn(frequency_size) * scale)  # fixed, saved with the weights
        self.mlp = nn.Sequential(nn.Linear(2 * frequency_size, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        angles = t.float()[:, None] * self.W[None, :] * 2 * math.pi  # RAE's order of the products (same rounding)
        features = torch.cat([angles.sin(), angles.cos()], dim=-1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class SinusoidalTimeEmbedding(nn.Module):
    """The DiT paper's ``TimestepEmbedder``: ``[cos(t f), sin(t f)]``, ``f = 10000^(-i / half)`` over ``frequency_size``
    features -> MLP; ``t`` is the flow time in [0, 1] as given (SiT feeds the same embedder its continuous time)."""

    def __init__(self, dim: int, frequency_size: int):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        half = self.frequency_size // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(self.mlp[0].weight.dtype))


class PatchEmbed(nn.Module):
    """[B, C, H, W] -> [B, N, D] with a p x p stride-p convolution (a linear map per patch)."""

    def __init__(self, in_channels: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


# -- the network ---------------------------------------------------------------------------------------------------


class DiT(nn.Module):
    """DiT^DH (``config.head_depth > 0``) or plain DiT; ``forward(x_t, t, y) -> v`` (same shape as ``x_t``)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        cfg = config.resolved()
        self.config = cfg
        d, dh, grid = cfg.hidden_size, cfg.head_hidden_size, cfg.grid_size
        self.x_embedder = PatchEmbed(cfg.in_channels, d, cfg.patch_size)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(d, grid, cls_token=False)[None], persistent=False)
        if cfg.arch == "dit":
            self.t_embedder = SinusoidalTimeEmbedding(d, cfg.frequency_size)
        else:
            self.t_embedder = GaussianFourierTimeEmbedding(d, cfg.frequency_size, cfg.fourier_scale)
        self.y_embedder = nn.Embedding(cfg.num_classes + 1, d)  # row num_classes = null label
        self.rope = Rope2D(d // cfg.num_heads, grid, cfg.rope_theta) if cfg.arch != "dit" else None
        self.blocks = nn.ModuleList(
            DiTBlock(d, cfg.num_heads, cfg.mlp_ratio, cfg.norm_eps, cfg.arch) for _ in range(cfg.depth)
        )
        if cfg.head_depth:
            self.s_projector = nn.Linear(d, dh) if dh != d else nn.Identity()  # RAE: no projection at equal widths
            self.head_embedder = PatchEmbed(cfg.in_channels, dh, cfg.patch_size)
            self.head_rope = Rope2D(dh // cfg.head_num_heads, grid, cfg.rope_theta)
            self.head_blocks = nn.ModuleList(
                DiTBlock(dh, cfg.head_num_heads, cfg.mlp_ratio, cfg.norm_eps) for _ in range(cfg.head_depth)
            )
        self.final_layer = FinalLayer(
            dh if cfg.head_depth else d, cfg.patch_size, cfg.out_channels, cfg.norm_eps, cfg.arch
        )
        if cfg.guidance_head_block is not None:
            self.guidance_head = FinalLayer(d, cfg.patch_size, cfg.out_channels, cfg.norm_eps)
        self.initialize_weights()

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def initialize_weights(self) -> None:
        """RAE's initialisation: linears keep PyTorch's default init in DiT^DH (``DiTwDDTHead`` with
        ``xavier_uniform_init=False``) and are Xavier with zero bias in plain DiT (``LightningDiT``); in both,
        patch embeddings Xavier on the flattened kernel with zero bias, label table and time-MLP weights
        normal(0.02), adaLN modulations and the final layer zero (adaLN-Zero)."""
        if not self.config.head_depth:
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.zeros_(module.bias)
        for embed in [self.x_embedder] + ([self.head_embedder] if self.config.head_depth else []):
            w = embed.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.zeros_(embed.proj.bias)
        nn.init.normal_(self.y_embedder.weight, std=0.02)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for block in [*self.blocks, *getattr(self, "head_blocks", [])]:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for final in (self.final_layer, getattr(self, "guidance_head", None)):
            for layer in (final.adaLN_modulation[-1], final.linear) if final is not None else ():
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def unpatchify(self, x: Tensor) -> Tensor:
        """[B, N, p*p*C] -> [B, C, H, W]."""
        p, g, c = self.config.patch_size, self.config.grid_size, self.config.out_channels
        x = x.view(x.shape[0], g, g, p, p, c)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    @property
    def has_guidance_head(self) -> bool:
        return self.config.guidance_head_block is not None

    def forward(self, x: Tensor, t: Tensor, y: Tensor, return_guidance: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """x_t [B, C, H, W], t [B] in [0, 1] (1 = noise), y [B] labels (``null_class`` = unconditional) -> v; with
        ``return_guidance`` (a DiT with a guidance head) ``(v, x_hat_base)`` from the same forward."""
        if return_guidance and not self.has_guidance_head:
            raise ValueError("this DiT has no free-guidance head (dit.guidance_head_block is null)")
        t_emb = self.t_embedder(t)
        c = t_emb + self.y_embedder(y)
        if self.config.head_depth:
            c = F.silu(c)  # (i): RAE's DiT^DH activates the condition here and again in every modulation
        h = self.x_embedder(x) + self.pos_embed.to(x.dtype)
        x_hat_base = None
        for k, block in enumerate(self.blocks, start=1):
            h = block(h, c, self.rope)
            if return_guidance and k == self.config.guidance_head_block:
                u = F.silu(t_emb.unsqueeze(1) + h)  # RAEv2's input and per-token condition of its base head
                x_hat_base = self.unpatchify(self.guidance_head(u, u))
        if not self.config.head_depth:
            v = self.unpatchify(self.final_layer(h, c))
        else:
            s = self.s_projector(F.silu(t_emb.unsqueeze(1) + h))  # (ii)
            g = self.head_embedder(x)
            for block in self.head_blocks:
                g = block(g, s, self.head_rope)
            v = self.unpatchify(self.final_layer(g, s))
        return (v, x_hat_base) if return_guidance else v

    def parameter_count(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # -- save / load ----------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> None:
        """``config.json`` (+ ``extra`` keys, e.g. class names) and ``model.safetensors``."""
        from .._version import __version__

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_safetensors(self.state_dict(), directory / WEIGHTS_NAME, metadata={"drorae_version": __version__})
        data = {**self.config.to_dict(), "_drorae_version": __version__}
        if extra:
            data["_extra"] = extra
        (directory / CONFIG_NAME).write_text(json.dumps(data, indent=2) + "\n")
        from ..card import write_model_card

        write_model_card(directory, parameters={"total": self.parameter_count(trainable_only=False)})

    @staticmethod
    def model_dir(directory: str | Path) -> Path:
        """A DiT directory, a train-dit run directory (its ``model/``) or a Hub id (``org/name[@rev][:sub]``)."""
        return model_dir(directory, (CONFIG_NAME, WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> DiT:
        directory = cls.model_dir(directory)
        path = directory / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {directory} is not a DiT directory (train-dit's --out/model)")
        raw = read_json(path, "a DiT config.json")
        if raw.get("_class_name") != "DiT":
            raise ValueError(f"{path} describes a {raw.get('_class_name')!r}, not a DiT")
        if raw.get("_dit_format", 1) != DIT_FORMAT:
            raise ValueError(
                f"{directory} holds a DiT saved by drorae {raw.get('_drorae_version', '<= 0.2')} in network format "
                f"{raw.get('_dit_format', 1)}, a different function from this version's (format {DIT_FORMAT}, RAE's "
                "DiTwDDTHead / LightningDiT: SiLU inside every adaLN modulation, column-first positions, 256 Fourier "
                "frequencies); its weights do not carry over. Retrain it with drorae train-dit, or import RAE's "
                "released generators with drorae import-rae-dit"
            )
        model = cls(DiTConfig.from_dict(raw))
        load_strict(model, load_safetensors(directory / WEIGHTS_NAME), source=directory / WEIGHTS_NAME)
        return model.to(map_location)

    @staticmethod
    def read_extra(directory: str | Path) -> dict:
        return read_json(DiT.model_dir(directory) / CONFIG_NAME, "a DiT config.json").get("_extra", {})
