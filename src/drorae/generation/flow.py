"""Flow matching in RAE's convention, its samplers, and guidance.

Interpolation (t = 1 is noise):   x_t = (1 - t) x + t eps,    target velocity  v = eps - x,  loss = |v_theta - v|^2.
Training times: ``t ~ logit-normal(0, 1)`` (or uniform), then the dimension-dependent shift (RAE; SD3's form)

    t' = s t / (1 + (s - 1) t),    s = sqrt(latent_dim / 4096)   (16 * 16 * 768 -> s ~ 6.93)

and the *same* shift maps the sampling grid (:func:`time_grid`), so training and sampling see the same times.

Samplers integrate from t = 1 towards 0 on a grid of shifted times:

* ``euler`` / ``heun``: the probability-flow ODE ``dx = v dt``. On the default ``rae`` grid ``steps`` is RAE's
  ``num_steps``: ``steps`` points ``t_i = shift(1 - i (1 - 1/1000) / (steps - 1))`` from 1 to shift(1/1000), so
  ``steps - 1`` Euler (or Heun, two evaluations each) steps and no step to t = 0, computed in float32 as RAE's
  ``sample_ode(sampling_method="euler" | "heun2", num_steps=steps)`` computes it. The ``to-zero`` grid instead takes
  ``steps`` steps over ``steps + 1`` points ending at t = 0;
* ``sde``: Euler-Maruyama on the reverse SDE with the same marginals (always on the ``to-zero`` grid),
  ``dx = [v - (g^2 / 2) score] dt + g dW``, with ``g^2 = 2 t`` and ``score = -eps_hat / t``, so that
  ``(g^2 / 2) score = -eps_hat = -(x + (1 - t) v)``: no division by t, a diffusion coefficient
  ``sqrt(2 t |dt|)`` that is never negative, and a last step to t = 0 without noise (it lands on
  ``x0_hat = x - t v``) taken at the shifted time like every other step. (RAE's own SDE sampler does not run
  with its defaults, so there is no RAE reference to match here.)

Guidance wraps the velocity: CFG ``v_u + w (v_c - v_u)`` (inside ``[t_min, t_max]``, conditional elsewhere);
AutoGuidance ``v_guide + w (v_main - v_guide)`` with both networks conditional, each run once per sample; free
guidance (RAEv2, arXiv 2605.18324) from the DiT's own x-prediction head after an early trunk block, in the
same forward: with the main network's clean-latent estimate ``x_hat = x_t - t v`` (exact for a velocity model),

    x_hat_g = x_hat_base + w (x_hat - x_hat_base),     v_g = (x_t - x_hat_g) / max(t, 0.05)

(RAEv2's ``forward_with_internalguidance`` and its x-to-velocity conversion). The head trains beside the flow
loss on ``|x - x_hat_base|^2 / max(t, 0.05)^2``, the velocity-space loss of an x-prediction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

# (x_t [B, ...], t [B], the same t as a Python float) -> v [B, ...]. Every sample of a step shares one time; the
# float lets guidance test its interval without reading the tensor back from the device (a sync per step).
VelocityFn = Callable[[Tensor, Tensor, float], Tensor]

TIME_DISTRIBUTIONS = ("logit-normal", "uniform")
SAMPLERS = ("euler", "heun", "sde")
GRIDS = ("rae", "to-zero")
RAE_T_END = 1 / 1000  # RAE's ODE stops at shift(1 - (1 - 1/1000)) = shift(1/1000)
GUIDANCE = ("none", "cfg", "autoguidance", "free")
X_PRED_T_EPS = 0.05  # RAEv2's t_eps: an x-prediction's velocity divides by max(t, 0.05)


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
    return flow_matching_terms(model, x, noise, t, y, guidance_head=False)["flow"]


def x_prediction_loss(x_hat: Tensor, x: Tensor, t: Tensor, t_eps: float = X_PRED_T_EPS) -> Tensor:
    """``mean |x - x_hat|^2 / max(t, t_eps)^2``: an x-prediction's loss in velocity space (RAEv2's ``compute_loss``
    for ``prediction="x"``: ``v_hat = (x_t - x_hat) / max(t, eps)`` against ``(x_t - x) / max(t, eps)``)."""
    scale = t.clamp_min(t_eps).view(-1, *([1] * (x.ndim - 1))).to(torch.float32)
    return ((x.float() - x_hat.float()) / scale).pow(2).mean()


def flow_matching_terms(model: nn.Module, x: Tensor, noise: Tensor, t: Tensor, y: Tensor, guidance_head: bool):
    """``{"flow": loss}`` and, for a DiT with a free-guidance head, ``"guidance_head"``: its x-prediction loss from
    the same forward."""
    x_t, target = interpolate(x, noise, t)
    if not guidance_head:
        return {"flow": (model(x_t, t, y).float() - target.float()).pow(2).mean()}
    v, x_hat_base = model(x_t, t, y, return_guidance=True)
    return {"flow": (v.float() - target.float()).pow(2).mean(), "guidance_head": x_prediction_loss(x_hat_base, x, t)}


def time_grid(steps: int, shift: float, grid: str = "rae") -> Tensor:
    """The sampling times from 1 downwards, shifted exactly as the training times are.

    ``rae``: ``steps`` points from 1 to shift(1/1000), in float32 as RAE's ``ode`` integrator builds them;
    ``to-zero``: ``steps + 1`` points from 1 to 0 (float64).
    """
    if grid == "rae":
        if steps < 2:
            raise ValueError(f"--steps must be >= 2 on RAE's grid (it counts grid points), got {steps}")
        return shift_time(1 - torch.linspace(0, 1 - RAE_T_END, steps), shift)
    if grid == "to-zero":
        if steps < 1:
            raise ValueError(f"--steps must be >= 1, got {steps}")
        return shift_time(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)
    raise ValueError(f"grid {grid!r} is not one of {GRIDS}")


@dataclass
class SamplerConfig:
    sampler: str = "euler"  # euler | heun (ODE) | sde (Euler-Maruyama)
    steps: int = 50  # rae grid: grid points (RAE's num_steps); to-zero grid: steps
    shift: float = 1.0
    grid: str | None = None  # None: rae for the ODE samplers, to-zero for sde

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler {self.sampler!r} is not one of {SAMPLERS}")
        if self.grid is None:
            self.grid = "to-zero" if self.sampler == "sde" else "rae"
        if self.grid not in GRIDS:
            raise ValueError(f"grid {self.grid!r} is not one of {GRIDS}")
        if self.sampler == "sde" and self.grid != "to-zero":
            raise ValueError("the sde sampler ends with a noise-free step to t = 0: it needs grid='to-zero'")
        time_grid(self.steps, self.shift, self.grid)  # validates steps

    @property
    def evaluations(self) -> int:
        """Network evaluations per sample (before guidance doubles any)."""
        steps = self.steps - 1 if self.grid == "rae" else self.steps
        return 2 * steps if self.sampler == "heun" else steps


@torch.no_grad()
def sample(
    velocity: VelocityFn,
    noise: Tensor,
    config: SamplerConfig,
    step_noise: Callable[[int], Tensor] | None = None,
) -> Tensor:
    """Integrate from ``noise`` (t = 1) along ``config``'s grid and return the last point (``x_0``).

    ``step_noise(i)`` gives the SDE's Gaussian increment for step ``i`` (shape of ``noise``); callers pass
    per-sample generators through it so that a sample does not depend on its batch. Default: ``randn_like``.
    """
    grid = time_grid(config.steps, config.shift, config.grid).tolist()  # Python floats: no device sync per step
    x = noise
    b = noise.shape[0]
    last = len(grid) - 2
    for i in range(len(grid) - 1):
        t, t_next = grid[i], grid[i + 1]
        dt = t_next - t  # negative; exact in float64 for float32 grid points, as RAE's float32 difference
        tb = torch.full((b,), float(t), device=x.device, dtype=torch.float32)
        v = velocity(x, tb, t)
        if config.sampler == "euler":
            x = x + dt * v
        elif config.sampler == "heun":
            x_pred = x + dt * v
            v_next = velocity(x_pred, torch.full_like(tb, t_next), t_next)
            x = x + dt * (0.5 * v + 0.5 * v_next)  # torchdiffeq's heun2 (RAE's): b = (1/2, 1/2)
        else:  # sde
            if i == last:  # last step to t = 0: deterministic, lands on x0_hat = x - t v
                x = x + dt * v
                continue
            eps_hat = x + (1 - t) * v
            drift = v + eps_hat  # v - (g^2 / 2) * score with g^2 = 2 t, score = -eps_hat / t
            z = step_noise(i) if step_noise is not None else torch.randn_like(x)
            x = x + dt * drift + math.sqrt(2.0 * t * -dt) * z
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
      for t in ``interval``; ``v_m`` outside it;
    * ``free``: the model's own x-prediction head (``model(..., return_guidance=True)``), one forward per step:
      ``v_g = (x_t - x_hat_g) / max(t, 0.05)``, ``x_hat_g = x_hat_base + w (x_t - t v - x_hat_base)`` in
      ``interval``; ``v`` outside it.
    """
    if guidance not in GUIDANCE:
        raise ValueError(f"guidance {guidance!r} is not one of {GUIDANCE}")
    if guidance == "autoguidance" and guide is None:
        raise ValueError("guidance=autoguidance needs a guide network (--guide DIR)")
    if guidance == "cfg" and null_class is None:
        raise ValueError("guidance=cfg needs the null class index")
    if guidance == "free" and not getattr(model, "has_guidance_head", False):
        raise ValueError(
            "guidance=free needs a DiT trained with a free-guidance head (dit.guidance_head_block); this one has none"
        )
    lo, hi = interval
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"guidance interval [{lo}, {hi}] must satisfy 0 <= t_min <= t_max <= 1")

    def velocity(x: Tensor, t: Tensor, t_value: float) -> Tensor:
        active = guidance != "none" and in_interval(t_value, interval)
        if not active:
            return model(x, t, labels)
        if guidance == "free":
            v, x_hat_base = model(x, t, labels, return_guidance=True)
            x_hat = x - t_value * v  # the main network's clean-latent estimate
            x_hat_g = x_hat_base + scale * (x_hat - x_hat_base)
            return (x - x_hat_g) / max(t_value, X_PRED_T_EPS)
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

    def velocity(x: Tensor, t: Tensor, t_value: float | None = None) -> Tensor:
        tt = t.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        a = 1 - tt
        var = a**2 * sigma**2 + tt**2
        centred = x - a * mu
        return tt * centred / var - (mu + a * sigma**2 * centred / var)

    return velocity
