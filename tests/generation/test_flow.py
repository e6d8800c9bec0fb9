"""Flow matching, the samplers and guidance, checked against the exact velocity field of a Gaussian."""

import math

import torch

from drorae.generation.flow import (
    SamplerConfig,
    flow_matching_loss,
    gaussian_velocity,
    guided_velocity,
    sample,
    shift_time,
    time_from_uniform,
    time_grid,
)

MU = torch.tensor([2.0, -1.0, 0.5])
SIGMA = torch.tensor([0.5, 1.5, 1.0])


class ExactVelocity(torch.nn.Module):
    """A 'network' that outputs the exact velocity of N(MU, SIGMA^2) (labels ignored)."""

    def __init__(self, bias: float = 0.0):
        super().__init__()
        self.v = gaussian_velocity(MU, SIGMA)
        self.bias = bias

    def forward(self, x, t, y):
        return self.v(x, t) + self.bias


def test_loss_of_the_exact_velocity_is_the_analytic_minimum():
    """At fixed t the best possible loss is E Var(eps - x | x_t) = s^2 + 1 - (t - a s^2)^2 / (a^2 s^2 + t^2)."""
    g = torch.Generator().manual_seed(0)
    n, t = 400_000, 0.3
    x = MU + SIGMA * torch.randn(n, 3, generator=g)
    eps = torch.randn(n, 3, generator=g)
    tt = torch.full((n,), t)
    a, s2 = 1 - t, SIGMA**2
    analytic = float((s2 + 1 - (t - a * s2) ** 2 / (a**2 * s2 + t**2)).mean())
    exact = float(flow_matching_loss(ExactVelocity(), x, eps, tt, torch.zeros(n, dtype=torch.long)))
    assert abs(exact - analytic) < 0.01 * analytic
    worse = float(flow_matching_loss(ExactVelocity(bias=0.1), x, eps, tt, torch.zeros(n, dtype=torch.long)))
    assert worse > exact + 0.009  # a shifted velocity costs bias^2 = 0.01 more


def test_loss_decreases_on_a_two_dimensional_mixture():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64), torch.nn.SiLU())
    net.append(torch.nn.Linear(64, 2))
    model = lambda x, t, y: net(torch.cat([x, t[:, None]], dim=1))  # noqa: E731
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    losses = []
    for _ in range(300):
        x = centres[torch.randint(0, 3, (256,))] + 0.1 * torch.randn(256, 2)
        t = time_from_uniform(torch.rand(256), "logit-normal", 1.0)
        loss = flow_matching_loss(model, x, torch.randn_like(x), t, torch.zeros(256, dtype=torch.long))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:30]) / 30, sum(losses[-30:]) / 30
    assert last < 0.8 * first, (first, last)
    with torch.no_grad():  # the samples land on the mixture's modes
        x = sample(lambda x, t, _: model(x, t, None), torch.randn(512, 2), SamplerConfig("heun", 40))
    nearest = torch.cdist(x, centres).min(dim=1).values
    assert nearest.median() < 0.5


def _noise(n=100_000, seed=0):
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed))


def test_ode_samplers_reproduce_the_gaussian():
    for sampler, steps in (("euler", 200), ("heun", 50)):
        for shift in (1.0, 3.0):
            x = sample(gaussian_velocity(MU, SIGMA), _noise(), SamplerConfig(sampler, steps, shift))
            torch.testing.assert_close(x.mean(0), MU, atol=0.02, rtol=0)
            torch.testing.assert_close(x.std(0), SIGMA, atol=0.03, rtol=0.02)


def test_sde_sampler_reproduces_the_gaussian_without_nan():
    g = torch.Generator().manual_seed(1)
    x = sample(
        gaussian_velocity(MU, SIGMA),
        _noise(),
        SamplerConfig("sde", 250, 3.0),
        step_noise=lambda i: torch.randn(100_000, 3, generator=g),
    )
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x.mean(0), MU, atol=0.03, rtol=0)
    torch.testing.assert_close(x.std(0), SIGMA, atol=0.04, rtol=0.03)
    # a single step (t: 1 -> 0) and a two-step run stay finite too
    for steps in (1, 2):
        assert torch.isfinite(
            sample(gaussian_velocity(MU, SIGMA), _noise(100), SamplerConfig("sde", steps, 6.93))
        ).all()


def test_the_shift_is_the_same_in_training_and_sampling():
    s = math.sqrt(16 * 16 * 768 / 4096)
    grid = time_grid(10, s, "to-zero")
    assert grid[0] == 1 and grid[-1] == 0 and torch.all(grid[1:] < grid[:-1])
    # the sampler's times are the training map applied to a uniform grid
    u = torch.linspace(1, 0, 11, dtype=torch.float64)
    torch.testing.assert_close(grid, time_from_uniform(u, "uniform", s), rtol=0, atol=1e-12)
    torch.testing.assert_close(shift_time(torch.tensor([0.5]), s), torch.tensor([s * 0.5 / (1 + (s - 1) * 0.5)]))
    # logit-normal: the median time 0.5 maps to the same shifted time
    torch.testing.assert_close(
        time_from_uniform(torch.tensor([0.5]), "logit-normal", s), shift_time(torch.tensor([0.5]), s)
    )


def test_the_default_grid_is_raes_num_steps_points_ending_at_shift_of_one_thousandth():
    """RAE's ode integrator: ``t = 1 - linspace(0, 1 - 1/1000, N)``, then shifted; N points, N - 1 steps."""
    s = math.sqrt(16 * 16 * 768 / 4096)
    grid = time_grid(50, s)
    assert len(grid) == 50 and grid.dtype == torch.float32 and grid[0] == 1
    by_hand = [s * u / (1 + (s - 1) * u) for u in (1 - i * 0.999 / 49 for i in range(50))]
    torch.testing.assert_close(grid.double(), torch.tensor(by_hand, dtype=torch.float64), rtol=0, atol=1e-6)
    assert abs(float(grid[-1]) - s * 0.001 / (1 + (s - 1) * 0.001)) < 1e-6  # 0.0069, not 0
    assert SamplerConfig("euler", 50, s).evaluations == 49 and SamplerConfig("heun", 50, s).evaluations == 98
    assert SamplerConfig("euler", 50, s, "to-zero").evaluations == 50 and SamplerConfig("sde", 50).grid == "to-zero"


class LabelNet(torch.nn.Module):
    """A velocity that depends on the label (the null class gives a different field)."""

    def forward(self, x, t, y):
        return gaussian_velocity(MU, SIGMA)(x, t) + 0.3 * y.float()[:, None] * x


class GuideNet(LabelNet):
    """A weaker network: half LabelNet's velocity, plus 0.2."""

    def forward(self, x, t, y):
        return 0.5 * super().forward(x, t, y) + 0.2


def _labelnet_by_hand(x, t, y):
    """LabelNet's velocity written out from the Gaussian formula (independent of gaussian_velocity)."""
    tt = t[:, None]
    a = 1 - tt
    var = a**2 * SIGMA**2 + tt**2
    centred = x - a * MU
    return tt * centred / var - (MU + a * SIGMA**2 * centred / var) + 0.3 * y.float()[:, None] * x


def test_guided_velocities_are_the_formulas_inside_the_interval_and_conditional_outside():
    model, guide = LabelNet(), GuideNet()
    x, y = torch.randn(4, 3, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 1, 2, 1])
    null = torch.full_like(y, 5)
    for t_value, inside in ((0.5, True), (0.9, False), (0.2, True), (0.1, False)):
        t = torch.full((4,), t_value)
        v_c, v_u = _labelnet_by_hand(x, t, y), _labelnet_by_hand(x, t, null)
        v_g = _labelnet_by_hand(x, t, y) * 0.5 + 0.2  # GuideNet by hand
        cfg = guided_velocity(model, y, "cfg", 3.0, interval=(0.2, 0.5), null_class=5)(x, t, t_value)
        ag = guided_velocity(model, y, "autoguidance", 1.7, interval=(0.2, 0.5), guide=guide)(x, t, t_value)
        torch.testing.assert_close(cfg, v_u + 3.0 * (v_c - v_u) if inside else v_c, rtol=0, atol=1e-5)
        torch.testing.assert_close(ag, v_g + 1.7 * (v_c - v_g) if inside else v_c, rtol=0, atol=1e-5)
    assert (v_u + 3.0 * (v_c - v_u) - v_c).abs().max() > 0.1  # the two branches are far apart


def test_guided_sampling_integrates_the_guided_velocity():
    """A whole Euler run with CFG equals Euler steps of the hand-written guided velocity on RAE's grid."""
    model, y = LabelNet(), torch.tensor([0, 1, 2, 1])
    config = SamplerConfig("euler", 8, 2.0)
    got = sample(guided_velocity(model, y, "cfg", 2.5, interval=(0.3, 0.8), null_class=5), _noise(4), config)
    x, grid = _noise(4), time_grid(8, 2.0).tolist()
    for t, t_next in zip(grid[:-1], grid[1:]):
        tb = torch.full((4,), t)
        v_c, v_u = _labelnet_by_hand(x, tb, y), _labelnet_by_hand(x, tb, torch.full_like(y, 5))
        x = x + (t_next - t) * (v_u + 2.5 * (v_c - v_u) if 0.3 <= t <= 0.8 else v_c)
    torch.testing.assert_close(got, x, rtol=0, atol=1e-5)


def test_autoguidance_runs_each_network_once_per_sample():
    calls = []

    class Counting(LabelNet):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x, t, y):
            calls.append((self.name, x.shape[0]))
            return super().forward(x, t, y)

    y = torch.tensor([0, 1, 2])
    sample(
        guided_velocity(Counting("main"), y, "autoguidance", 1.5, guide=Counting("guide")),
        _noise(3),
        SamplerConfig("euler", 5),
    )
    assert calls == [("main", 3), ("guide", 3)] * 4  # RAE's grid: 5 points, 4 steps
