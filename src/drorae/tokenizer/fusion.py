"""Depth-routed fusion of every backbone layer into one latent (paper section 3.2, eqs. 2-5).

    h_k     = LN_bb(e_k(LN_bb(z^(k))))                              eq. 2  (layer-wise experts)
    w       = R([z^(1); ...; z^(L)])            in R^{N x L}        eq. 3  (one linear router)
    z_fuse  = LN_bb( sum_k w_k h_k / sqrt(sum_k w_k^2 + eps) )      eq. 4  (energy-constrained)
    z_final = LN_bb( z_base + beta * (z_fuse - z_base) )            eq. 5  (incremental correction)

Eq. 5's outer LN_bb returns the corrected latent to the space of RAE's base, whose tokens are LN_bb outputs.
On a base that is not (RAEv2's layer mean, arXiv 2605.18324: a mean of LN_bb outputs plus a global term has
no fixed token norm), the correction is applied without it, ``z_final = z_base + beta (z_fuse - z_base)``, so
that beta -> 0 tends to the base latent it corrects rather than to a re-normalised copy of it.

LN_bb is the backbone's final LayerNorm without affine parameters (RAE's latent normalisation).
The L experts are stored as stacked weights and run as batched matmuls: one ``baddbmm`` per
expert layer for all experts at once, no Python loop over layers in the forward pass.

Choices where the paper is silent (see docs): the router reads the LN_bb-normalised layers
(eq. 3 prints the layer inputs in parentheses; raw block outputs of DINOv2 differ in scale by
orders of magnitude across depth), and the expert activation is GELU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..configuration import ConfigError, apply_preset, config_from_dict, require

ROUTINGS = ("energy", "softmax", "cross_attention")
CORRECTIONS = ("incremental", "replace")
ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU, "identity": nn.Identity}

# Expert widths the paper names for DINOv2-B (C=768, L=12). The text says the fusion module
# has "~29M" parameters, which the appendix-C formula gives for h=1536; appendix A says the
# experts are Linear(768, 3072), which gives 56.8M. The two disagree; both are shipped.
FUSION_PRESETS = {
    "paper-text-29m": {"expert_hidden": 1536},
    "paper-appendix-a": {"expert_hidden": 3072},
}


def paper_param_count(dim: int, num_layers: int, expert_hidden: int) -> int:
    """Appendix C: params = L (C h + h + h C + h) + C L^2 + L."""
    c, n, h = dim, num_layers, expert_hidden
    return n * (c * h + h + h * c + h) + c * n * n + n


@dataclass
class FusionOutput:
    latent: Tensor  # z_final [B, N, C]
    fused: Tensor  # z_fuse  [B, N, C]
    weights: Tensor  # w       [B, N, K] routing weight per fused layer


class LayerExperts(nn.Module):
    """K two-layer MLP experts, Linear(C,h) -> LayerNorm(h) -> act -> Linear(h,C), as stacked weights.

    ``experts[k]`` returns a callable view of expert k (for inspection and tests); ``experts(x)``
    runs all K experts on x [K, M, C] with two batched matmuls.
    """

    def __init__(self, num_experts: int, dim: int, hidden: int, activation: str = "gelu", ln_eps: float = 1e-5):
        super().__init__()
        self.num_experts, self.dim, self.hidden, self.ln_eps = num_experts, dim, hidden, ln_eps
        self.w_in = nn.Parameter(torch.empty(num_experts, dim, hidden))
        self.b_in = nn.Parameter(torch.empty(num_experts, 1, hidden))
        self.ln_weight = nn.Parameter(torch.ones(num_experts, 1, hidden))
        self.ln_bias = nn.Parameter(torch.zeros(num_experts, 1, hidden))
        self.w_out = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.b_out = nn.Parameter(torch.empty(num_experts, 1, dim))
        self.act = ACTIVATIONS[activation]()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same distribution as K independent nn.Linear layers.
        for w, b, fan_in in ((self.w_in, self.b_in, self.dim), (self.w_out, self.b_out, self.hidden)):
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)
        nn.init.ones_(self.ln_weight)
        nn.init.zeros_(self.ln_bias)

    def __len__(self) -> int:
        return self.num_experts

    def __getitem__(self, k: int):
        if not -self.num_experts <= k < self.num_experts:
            raise IndexError(f"expert index {k} out of range for {self.num_experts} experts")
        return lambda x: self._run(x.unsqueeze(0), slice(k % self.num_experts, k % self.num_experts + 1)).squeeze(0)

    def _run(self, x: Tensor, idx: slice) -> Tensor:
        if not (torch.is_grad_enabled() and (x.requires_grad or self.w_in.requires_grad)):
            return self._run_inference(x, idx)  # no graph to record: fewer [K, M, h] passes and allocations
        y = torch.baddbmm(self.b_in[idx], x, self.w_in[idx])  # [K, M, h]
        # per-expert LayerNorm affine in one fused kernel (F.layer_norm's affine is shared across rows)
        y = torch.addcmul(self.ln_bias[idx], F.layer_norm(y, (self.hidden,), eps=self.ln_eps), self.ln_weight[idx])
        return torch.baddbmm(self.b_out[idx], self.act(y), self.w_out[idx])  # [K, M, C]

    def _run_inference(self, x: Tensor, idx: slice) -> Tensor:
        """:meth:`_run` without autograd: the activations [K, M, h] are memory-bound, so each step after the first
        matmul works in place (two allocations of [K, M, h] instead of four)."""
        y = torch.bmm(x, self.w_in[idx]).add_(self.b_in[idx])
        y = F.layer_norm(y, (self.hidden,), eps=self.ln_eps)
        y.mul_(self.ln_weight[idx]).add_(self.ln_bias[idx])
        if isinstance(self.act, nn.GELU):
            y = torch.ops.aten.gelu_(y, approximate=self.act.approximate)
        elif isinstance(self.act, (nn.SiLU, nn.ReLU)):
            y = self.act.__class__(inplace=True)(y)
        else:
            y = self.act(y)
        return torch.baddbmm(self.b_out[idx], y, self.w_out[idx])

    def forward(self, x: Tensor) -> Tensor:
        """x [K, M, C] -> [K, M, C], expert k applied to slice k."""
        return self._run(x, slice(None))

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, dim={self.dim}, hidden={self.hidden}"


class LayerCrossAttention(nn.Module):
    """Ablation router: multi-head attention over the layer axis, the last layer as query."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by cross-attention heads={num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, query: Tensor, experts: Tensor) -> tuple[Tensor, Tensor]:
        """query [M, C], experts [K, M, C] -> (mixed [M, C], weights [M, K] averaged over heads)."""
        k_layers, m, c = experts.shape
        hd = c // self.num_heads
        q = self.q(query).view(m, self.num_heads, 1, hd)
        k = self.k(experts).view(k_layers, m, self.num_heads, hd).permute(1, 2, 0, 3)  # [M, H, K, hd]
        v = self.v(experts).view(k_layers, m, self.num_heads, hd).permute(1, 2, 0, 3)
        attn = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(hd), dim=-1)  # [M, H, 1, K]
        mixed = (attn @ v).reshape(m, c)
        return self.out(mixed), attn.mean(dim=1).squeeze(1)


@dataclass
class FusionConfig:
    """The fusion module's settings. ``preset`` fills ``expert_hidden`` (and rejects a contradicting one);
    ``num_layers``, ``dim`` and ``norm_eps`` come from the backbone when a tokenizer is built from configs.

    Fields:
        expert_hidden: h, the experts' hidden width.
        beta: correction strength of eq. 5 (0 reproduces RAE's latent exactly).
        routing: "energy" (eq. 4, weights may be negative), "softmax" or "cross_attention" (ablations).
        correction: "incremental" (eq. 5) or "replace" (z_final = z_fuse, ablation).
        layers: 1-based indices of the blocks to fuse (default: all 1..L), e.g. the deepest N.
        activation: the experts' activation (the paper names none; GELU).
        energy_eps: eps of eq. 4's denominator.
        energy_norm: divide by eq. 4's l2 norm of the weights (ablation: off). The LayerNorm after it cancels
            any per-token scale up to its eps, so this mostly changes the gradients' scale.
        attention_heads: heads of the cross-attention ablation router.
        num_layers: L, the backbone's block count (hidden_states has L entries).
        dim: C, the backbone width.
        norm_eps: eps of LN_bb; must match the backbone's final LayerNorm.
    """

    preset: str | None = None  # "paper-text-29m" (h=1536) or "paper-appendix-a" (h=3072)
    expert_hidden: int | None = None
    beta: float = 0.2
    routing: str = "energy"
    correction: str = "incremental"
    layers: list[int] | None = None
    activation: str = "gelu"
    energy_eps: float = 1e-6
    energy_norm: bool = True
    attention_heads: int = 8
    num_layers: int | None = None
    dim: int | None = None
    norm_eps: float = 1e-6

    def resolved(self) -> FusionConfig:
        """A copy with the preset applied and every field checked (what :class:`DepthRoutedFusion` stores)."""
        cfg = replace(self, layers=None if self.layers is None else [int(k) for k in self.layers])
        apply_preset(cfg, "fusion", FUSION_PRESETS)
        require(
            cfg,
            "fusion",
            ("expert_hidden",),
            f"set fusion.preset (one of {sorted(FUSION_PRESETS)}) or fusion.expert_hidden",
        )
        require(cfg, "fusion", ("num_layers", "dim"), "they come from the backbone (build through DRoRAE.from_config)")
        if cfg.routing not in ROUTINGS:
            raise ConfigError(f"fusion.routing={cfg.routing!r} is not one of {ROUTINGS}")
        if cfg.correction not in CORRECTIONS:
            raise ConfigError(f"fusion.correction={cfg.correction!r} is not one of {CORRECTIONS}")
        if cfg.activation not in ACTIVATIONS:
            raise ConfigError(f"fusion.activation={cfg.activation!r} is not one of {sorted(ACTIVATIONS)}")
        if not 0.0 <= cfg.beta <= 1.0:
            raise ConfigError(f"fusion.beta={cfg.beta} must lie in [0, 1]")
        layers = cfg.layers if cfg.layers is not None else list(range(1, cfg.num_layers + 1))
        if not layers or any(not 1 <= k <= cfg.num_layers for k in layers) or len(set(layers)) != len(layers):
            raise ConfigError(f"fusion.layers={layers} must be distinct block indices in 1..{cfg.num_layers}")
        return cfg

    @property
    def fused_layers(self) -> list[int]:
        """The 1-based blocks that are fused (``layers``, or all of them)."""
        return list(range(1, self.num_layers + 1)) if self.layers is None else list(self.layers)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FusionConfig:
        return config_from_dict(cls, data, "fusion")


class DepthRoutedFusion(nn.Module):
    """The DRoRAE fusion module F(z^(1..L), z_base) -> z_final, built from a :class:`FusionConfig`."""

    def __init__(self, config: FusionConfig):
        super().__init__()
        self.config = cfg = config.resolved()
        self.num_layers, self.dim, self.expert_hidden = cfg.num_layers, cfg.dim, cfg.expert_hidden
        self.beta, self.routing, self.correction = float(cfg.beta), cfg.routing, cfg.correction
        self.norm_eps, self.energy_eps, self.energy_norm = float(cfg.norm_eps), float(cfg.energy_eps), cfg.energy_norm
        self.layers = cfg.fused_layers
        self.register_buffer("layer_index", torch.tensor([k - 1 for k in self.layers]), persistent=False)
        k = len(self.layers)
        self.experts = LayerExperts(k, cfg.dim, cfg.expert_hidden, activation=cfg.activation)
        if cfg.routing == "cross_attention":
            self.router: nn.Module = LayerCrossAttention(cfg.dim, cfg.attention_heads)
        else:
            self.router = nn.Linear(cfg.dim * k, k)  # eq. 3: ONE linear layer on the concatenated layers

    def route(self, z: Tensor) -> Tensor:
        """Eq. 3's linear router on the concatenation [z^(1); ...; z^(K)] without building it: z [K, M, C] ->
        logits [M, K] = sum_k z^(k) W_k^T + b, with W_k the router weight's columns of layer k (one batched matmul
        instead of a [M, K*C] copy of the layers)."""
        k, _, c = z.shape
        w = self.router.weight.view(-1, k, c).permute(1, 2, 0)  # [K layers, C, K outputs]
        return torch.bmm(z, w).sum(0) + self.router.bias

    def ln_bb(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, (self.dim,), eps=self.norm_eps)

    def forward(self, hidden_states: Tensor, z_base: Tensor, base_normalized: bool = True) -> FusionOutput:
        """hidden_states [L, B, N, C] (blocks 1..L), z_base [B, N, C] -> FusionOutput. ``base_normalized``: the base
        is RAE's ``LN_bb(z^(L))`` (eq. 5 as printed); False for a layer-mean base (no outer LN_bb, see above)."""
        if hidden_states.ndim != 4 or hidden_states.shape[0] != self.num_layers or hidden_states.shape[-1] != self.dim:
            raise ValueError(
                f"hidden_states must be [L={self.num_layers}, B, N, C={self.dim}], got {tuple(hidden_states.shape)}"
            )
        if z_base.shape != hidden_states.shape[1:]:
            raise ValueError(
                f"z_base shape {tuple(z_base.shape)} must equal hidden_states[k] shape {tuple(hidden_states.shape[1:])}"
            )
        _, b, n, c = hidden_states.shape
        if len(self.layers) != self.num_layers:  # a subset (scaling study); all layers need no gather copy
            hidden_states = hidden_states.index_select(0, self.layer_index)
        z = self.ln_bb(hidden_states).reshape(len(self.layers), b * n, c)  # [K, M, C]
        h = self.ln_bb(self.experts(z))  # eq. 2: h_k = LN_bb(e_k(LN_bb(z^(k))))

        if self.routing == "cross_attention":
            mixed, w = self.router(self.ln_bb(z_base).reshape(b * n, c), h)
        else:
            logits = self.route(z)  # eq. 3: w = R([z^(1); ...; z^(L)])  [M, K]
            if self.routing == "energy":
                # eq. 4: energy-constrained aggregation; weights may be negative.
                w = logits
                mixed = torch.einsum("mk,kmc->mc", w, h)
                if self.energy_norm:
                    mixed = mixed / torch.sqrt((w * w).sum(-1, keepdim=True) + self.energy_eps)
            else:  # softmax ablation: a convex combination of the experts
                w = torch.softmax(logits, dim=-1)
                mixed = torch.einsum("mk,kmc->mc", w, h)
        z_fuse = self.ln_bb(mixed).view(b, n, c)

        if self.correction == "replace":
            z_final = z_fuse
        elif self.beta == 0.0:
            z_final = z_base  # eq. 5 with beta = 0 is the base latent (skip LN(LN(x)) rounding)
        elif base_normalized:
            z_final = self.ln_bb(z_base + self.beta * (z_fuse - z_base))  # eq. 5
        else:
            z_final = z_base + self.beta * (z_fuse - z_base)  # eq. 5 on a layer-mean base (no outer LN_bb)
        return FusionOutput(latent=z_final, fused=z_fuse, weights=w.view(b, n, -1))
