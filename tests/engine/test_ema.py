import pytest
import torch
from torch import nn

from drorae.engine import EMA


def test_ema_matches_the_warmed_up_recurrence() -> None:
    p = nn.Parameter(torch.zeros(3))
    ema = EMA([("w", p)], decay=0.99)
    expected = torch.zeros(3)
    for t in range(200):
        with torch.no_grad():
            p.fill_(float(t + 1))
        ema.update(t)
        d = min(0.99, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * p.detach()
    torch.testing.assert_close(ema.state_dict()["w"], expected)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10_000) == 0.99


def test_short_run_forgets_the_initialisation() -> None:
    # 150 updates that all set the weights to 1 from an initial 0: without the warm-up the shadow
    # would still hold 0.99**150 = 22% of the initial value.
    p = nn.Parameter(torch.zeros(1))
    ema = EMA([("w", p)], decay=0.99)
    with torch.no_grad():
        p.fill_(1.0)
    for t in range(150):
        ema.update(t)
    remaining = 1.0 - float(ema.state_dict()["w"])
    # what is left of the initialisation is the product of the warmed-up decays, under 5%,
    # where a constant decay would leave 0.99**150 (22%)
    expected = 1.0
    for t in range(150):
        expected *= min(0.99, (1 + t) / (10 + t))
    assert remaining == pytest.approx(expected, abs=1e-6)  # float32 shadow
    assert remaining < 0.05 < 0.2 < 0.99**150


def test_bad_decay_is_refused() -> None:
    with pytest.raises(ValueError, match="ema_decay=1.0"):
        EMA([("w", nn.Parameter(torch.zeros(1)))], decay=1.0)
