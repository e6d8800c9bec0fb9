"""Exponential moving average of the trained parameters (what a phase exports)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class EMA:
    """shadow <- d_t * shadow + (1 - d_t) * param, for a fixed list of named parameters.

    ``d_t = min(decay, (1 + t) / (10 + t))`` at optimizer update ``t`` (0-based), the warm-up that
    diffusers' ``EMAModel`` applies by default; ``warmup=False`` uses ``decay`` from the first update
    (RAE). Why: a short phase (the demo's 150 steps) starting
    from freshly initialised weights (phase 2's fusion) would otherwise export a shadow that
    still holds ``decay ** steps`` of the random initialisation (22% for 0.99 and 150 steps).
    For runs much longer than ``10 / (1 - decay)`` steps the warm-up makes no difference.
    """

    def __init__(self, named_params: list[tuple[str, nn.Parameter]], decay: float, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay={decay} must be in [0, 1)")
        self.decay = decay
        self.warmup = warmup
        self.names = [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        self.shadow = [p.detach().clone().float() for p in self.params]

    def decay_at(self, t: int) -> float:
        return min(self.decay, (1.0 + t) / (10.0 + t)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, t: int) -> None:
        """Fold in the parameters after optimizer update ``t`` (0-based; the trainer's step)."""
        # One fused kernel per device, no host sync (t is a Python int).
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - self.decay_at(t))

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for s, p in zip(self.shadow, self.params):
            p.copy_(s.to(p.dtype))

    def state_dict(self) -> dict[str, Tensor]:
        return {n: s for n, s in zip(self.names, self.shadow)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = sorted(set(self.names) - set(state))
        if missing:
            raise KeyError(f"EMA state is missing {missing[:5]}")
        for i, n in enumerate(self.names):
            self.shadow[i].copy_(state[n])
