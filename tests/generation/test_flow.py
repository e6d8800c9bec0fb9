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
        x = sample(lambda x, t: model(x, t, None), torch.randn(512, 2), SamplerConfig("heun", 40))
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
    grid = time_grid(10, s)
    assert grid[0] == 1 and grid[-1] == 0 and torch.all(grid[1:] < grid[:-1])
    # the sampler's times are the training map applied to a uniform grid
    u = torch.linspace(1, 0, 11, dtype=torch.float64)
    torch.testing.assert_close(grid, time_from_uniform(u, "uniform", s), rtol=0, atol=1e-12)
    torch.testing.assert_close(shift_time(torch.tensor([0.5]), s), torch.tensor([s * 0.5 / (1 + (s - 1) * 0.5)]))
    # logit-normal: the median time 0.5 maps to the same shifted time
    torch.testing.assert_close(
        time_from_uniform(torch.tensor([0.5]), "logit-normal", s), shift_time(torch.tensor([0.5]), s)
    )


class LabelNet(torch.nn.Module):
    """A velocity that depends on the label (the null class gives a different field)."""

    def forward(self, x, t, y):
        return gaussian_velocity(MU, SIGMA)(x, t) + 0.3 * y.float()[:, None] * x


def test_autoguidance_with_guide_equal_to_main_is_unguided_sampling():
    model = LabelNet()
    y = torch.tensor([0, 1, 2, 1])
    plain = sample(guided_velocity(model, y), _noise(4), SamplerConfig("euler", 10, 2.0))
    auto = sample(
        guided_velocity(model, y, "autoguidance", 2.5, guide=model), _noise(4), SamplerConfig("euler", 10, 2.0)
    )
    assert torch.equal(plain, auto)


def test_cfg_with_scale_one_is_conditional_sampling_and_other_scales_differ():
    model = LabelNet()
    y = torch.tensor([0, 1, 2, 1])
    cond = sample(guided_velocity(model, y), _noise(4), SamplerConfig("heun", 10, 2.0))
    cfg1 = sample(guided_velocity(model, y, "cfg", 1.0, null_class=5), _noise(4), SamplerConfig("heun", 10, 2.0))
    torch.testing.assert_close(cfg1, cond, rtol=0, atol=1e-5)
    cfg3 = sample(guided_velocity(model, y, "cfg", 3.0, null_class=5), _noise(4), SamplerConfig("heun", 10, 2.0))
    assert (cfg3 - cond).abs().max() > 0.1
    # outside the interval CFG is conditional (Euler never evaluates t = 0, so [0, 0] is never active)
    euler = SamplerConfig("euler", 10, 2.0)
    cond_euler = sample(guided_velocity(model, y), _noise(4), euler)
    outside = sample(guided_velocity(model, y, "cfg", 3.0, interval=(0.0, 0.0), null_class=5), _noise(4), euler)
    assert torch.equal(outside, cond_euler)


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
        SamplerConfig("euler", 4),
    )
    assert calls == [("main", 3), ("guide", 3)] * 4
