"""Flow matching in RAE's convention, its samplers, and guidance.

Interpolation (t = 1 is noise):   x_t = (1 - t) x + t eps,    target velocity  v = eps - x,  loss = |v_theta - v|^2.
Training times: ``t ~ logit-normal(0, 1)`` (or uniform), then the dimension-dependent shift (RAE; SD3's form)

    t' = s t / (1 + (s - 1) t),    s = sqrt(latent_dim / 4096)   (16 * 16 * 768 -> s ~ 6.93)

and the *same* shift maps the sampling grid (:func:`time_grid`), so training and sampling see the same times.

Samplers integrate from t = 1 to t = 0 on that grid:

* ``euler`` / ``heun``: the probability-flow ODE ``dx = v dt``;
* ``sde``: Euler-Maruyama on the reverse SDE with the same marginals,
  ``dx = [v - (g^2 / 2) score] dt + g dW``, with ``g^2 = 2 t`` and ``score = -eps_hat / t``, so that
  ``(g^2 / 2) score = -eps_hat = -(x + (1 - t) v)``: no division by t, a diffusion coefficient
  ``sqrt(2 t |dt|)`` that is never negative, and a last step to t = 0 without noise (it lands on
  ``x0_hat = x - t v``) taken at the shifted time like every other step.

Guidance wraps the velocity: CFG ``v_u + w (v_c - v_u)`` (inside ``[t_min, t_max]``, conditional elsewhere);
AutoGuidance ``v_guide + w (v_main - v_guide)`` with both networks conditional, each run once per sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

VelocityFn = Callable[[Tensor, Tensor], Tensor]  # (x_t [B, ...], t [B]) -> v [B, ...]

TIME_DISTRIBUTIONS = ("logit-normal", "uniform")
SAMPLERS = ("euler", "heun", "sde")
GUIDANCE = ("none", "cfg", "autoguidance")


def dimension_shift(latent_dim: int, base_dim: int = 4096) -> float:
    """RAE's time shift ``s = sqrt(latent_dim / base_dim)``."""
    return math.sqrt(latent_dim / base_dim)


def shift_time(t: Tensor, shift: float) -> Tensor:
    """``t' = s t / (1 + (s - 1) t)``: maps [0, 1] onto itself, pushing times towards noise for s > 1."""
    return shift * t / (1 + (shift - 1) * t)


def time_from_uniform(u: Tensor, distribution: str, shift: float) -> Tensor:
    """Training times from uniforms ``u`` in (0, 1): logit-normal(0, 1) via the normal quantile, or uniform;
    then shifted. Taking ``u`` (drawn per sample by the data pipeline) keeps every draw reproducible."""
    if distribution == "logit-normal":
        t = torch.sigmoid(math.sqrt(2.0) * torch.erfinv(2 * u - 1))
    elif distribution == "uniform":
        t = u
    else:
        raise ValueError(f"time distribution {distribution!r} is not one of {TIME_DISTRIBUTIONS}")
    return shift_time(t, shift)


def interpolate(x: Tensor, noise: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """``(x_t, v)``: ``x_t = (1 - t) x + t eps`` and the target ``v = eps - x``; ``t`` is [B]."""
    tt = t.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return (1 - tt) * x + tt * noise, noise - x


def flow_matching_loss(model: nn.Module, x: Tensor, noise: Tensor, t: Tensor, y: Tensor) -> Tensor:
    """Unweighted MSE between the network's velocity at ``(x_t, t, y)`` and ``eps - x`` (mean over everything)."""
    x_t, target = interpolate(x, noise, t)
    return (model(x_t, t, y).float() - target.float()).pow(2).mean()


def time_grid(steps: int, shift: float, device: torch.device | str = "cpu") -> Tensor:
    """``steps + 1`` times from 1 to 0: uniform, then shifted exactly as the training times are."""
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    return shift_time(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift).to(device)


@dataclass
class SamplerConfig:
    sampler: str = "euler"  # euler | heun (ODE) | sde (Euler-Maruyama)
    steps: int = 50
    shift: float = 1.0

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler {self.sampler!r} is not one of {SAMPLERS}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


@torch.no_grad()
def sample(
    velocity: VelocityFn,
    noise: Tensor,
    config: SamplerConfig,
    step_noise: Callable[[int], Tensor] | None = None,
) -> Tensor:
    """Integrate from ``noise`` (t = 1) to t = 0 and return ``x_0``.

    ``step_noise(i)`` gives the SDE's Gaussian increment for step ``i`` (shape of ``noise``); callers pass
    per-sample generators through it so that a sample does not depend on its batch. Default: ``randn_like``.
    """
    grid = time_grid(config.steps, config.shift).tolist()  # Python floats: no device sync per step
    x = noise
    b = noise.shape[0]
    for i in range(config.steps):
        t, t_next = grid[i], grid[i + 1]
        dt = float(t_next - t)  # negative
        tb = torch.full((b,), float(t), device=x.device, dtype=torch.float32)
        v = velocity(x, tb)
        if config.sampler == "euler":
            x = x + dt * v
        elif config.sampler == "heun":
            x_pred = x + dt * v
            v_next = velocity(x_pred, torch.full_like(tb, float(t_next)))
            x = x + dt * 0.5 * (v + v_next)
        else:  # sde
            if i == config.steps - 1:  # last step to t = 0: deterministic, lands on x0_hat = x - t v
                x = x + dt * v
                continue
            eps_hat = x + (1 - float(t)) * v
            drift = v + eps_hat  # v - (g^2 / 2) * score with g^2 = 2 t, score = -eps_hat / t
            z = step_noise(i) if step_noise is not None else torch.randn_like(x)
            x = x + dt * drift + math.sqrt(2.0 * float(t) * -dt) * z
    return x


# -- guidance --------------------------------------------------------------------------------------------------


def in_interval(t: float, interval: tuple[float, float]) -> bool:
    return interval[0] <= t <= interval[1]


def guided_velocity(
    model: nn.Module,
    labels: Tensor,
    guidance: str = "none",
    scale: float = 1.0,
    interval: tuple[float, float] = (0.0, 1.0),
    guide: nn.Module | None = None,
    null_class: int | None = None,
) -> VelocityFn:
    """The velocity a sampler integrates for class ``labels`` [B].

    * ``none``: ``v(x, t, y)``;
    * ``cfg``: ``v_u + w (v_c - v_u)`` for t in ``interval`` (one forward over the 2B batch ``[cond; null]``),
      ``v_c`` outside it (B only);
    * ``autoguidance``: ``v_g + w (v_m - v_g)``, main and ``guide`` both conditional, each once on the B samples,
      for t in ``interval``; ``v_m`` outside it.
    """
    if guidance not in GUIDANCE:
        raise ValueError(f"guidance {guidance!r} is not one of {GUIDANCE}")
    if guidance == "autoguidance" and guide is None:
        raise ValueError("guidance=autoguidance needs a guide network (--guide DIR)")
    if guidance == "cfg" and null_class is None:
        raise ValueError("guidance=cfg needs the null class index")
    lo, hi = interval
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"guidance interval [{lo}, {hi}] must satisfy 0 <= t_min <= t_max <= 1")

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        active = guidance != "none" and in_interval(float(t[0]), interval)
        if not active:
            return model(x, t, labels)
        if guidance == "cfg":
            both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, torch.full_like(labels, null_class)]))
            v_c, v_u = both.chunk(2)
            return v_u + scale * (v_c - v_u)
        v_m, v_g = model(x, t, labels), guide(x, t, labels)
        return v_g + scale * (v_m - v_g)

    return velocity


# -- the exact velocity of a Gaussian (tests and sanity checks) ------------------------------------------------


def gaussian_velocity(mu: Tensor, sigma: Tensor) -> VelocityFn:
    """The exact flow-matching velocity ``E[eps - x | x_t]`` when the data are ``N(mu, diag(sigma^2))``.

    With ``a = 1 - t``: ``x_t ~ N(a mu, a^2 sigma^2 + t^2)``; ``E[x | x_t] = mu + a sigma^2 (x_t - a mu) / var`` and
    ``E[eps | x_t] = t (x_t - a mu) / var``.
    """

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        tt = t.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        a = 1 - tt
        var = a**2 * sigma**2 + tt**2
        centred = x - a * mu
        return tt * centred / var - (mu + a * sigma**2 * centred / var)

    return velocity
