"""Free guidance (RAEv2, arXiv 2605.18324): the DiT's own x-prediction head after an early trunk block, its loss,
the guided velocity, one forward per step, and the network without it unchanged."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from drorae.configuration import ConfigError
from drorae.generation import DiT, DiTConfig
from drorae.generation.flow import (
    SamplerConfig,
    flow_matching_terms,
    guided_velocity,
    interpolate,
    sample,
    x_prediction_loss,
)

from ..conftest import randomize

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "raev2_guidance"


def tiny(head_block=None, **kw):
    torch.manual_seed(0)
    cfg = dict(preset="DiTDH-tiny", in_channels=8, input_size=4, num_classes=3, guidance_head_block=head_block)
    return DiT(DiTConfig(**cfg, **kw)).eval()


@pytest.fixture(scope="module")
def fixture():
    return load_file(str(FIXTURE / "guidance.safetensors")), json.loads((FIXTURE / "meta.json").read_text())


def test_the_head_is_raev2s_base_final_layer(fixture):
    """Our guidance head with RAEv2's DDTFinalLayer weights on RAEv2's input gives RAEv2's output."""
    data, meta = fixture
    d, c = meta["shapes"]["D"], meta["shapes"]["C"]
    head = DiT(DiTConfig(hidden_size=d, depth=2, num_heads=2, head_hidden_size=0, head_depth=0, head_num_heads=0,
                         in_channels=c, input_size=4, num_classes=3, guidance_head_block=1)).guidance_head  # fmt: skip
    rename = {"adaln_modulation.1": "adaLN_modulation.1"}
    state = {}
    for key, value in data.items():
        if key.startswith("head.") and key not in ("head.input", "head.output"):
            name = key[len("head.") :]
            for a, b in rename.items():
                name = name.replace(a, b)
            state[name] = value
    head.load_state_dict(state, strict=True)
    u = data["head.input"]
    torch.testing.assert_close(head(u, u), data["head.output"], rtol=1e-5, atol=1e-6)


def test_guided_velocity_is_raev2s(fixture):
    data, meta = fixture
    v, x_base, x_t, t = data["guide.v"], data["guide.x_base"], data["guide.x_t"], data["guide.t"]

    class Stub(torch.nn.Module):
        has_guidance_head = True

        def forward(self, x, tt, y, return_guidance=False):
            return (v[self.i : self.i + 1], x_base[self.i : self.i + 1]) if return_guidance else v[self.i : self.i + 1]

    stub = Stub()
    velocity = guided_velocity(stub, torch.zeros(1, dtype=torch.long), "free", meta["scale"], tuple(meta["interval"]))
    for i in range(len(t)):  # one sample per time, as a sampler calls it (every sample of a step shares t)
        stub.i = i
        ours = velocity(x_t[i : i + 1], t[i : i + 1], float(t[i]))
        torch.testing.assert_close(ours, data["guide.velocity"][i : i + 1], rtol=1e-5, atol=1e-5)


def test_head_loss_is_the_formula_and_raev2s(fixture):
    data, _ = fixture
    x, x_hat, t = data["loss.x"], data["loss.x_hat"], data["loss.t"]
    by_hand = torch.stack([((x[i] - x_hat[i]) / max(float(t[i]), 0.05)) ** 2 for i in range(len(t))]).mean()
    torch.testing.assert_close(x_prediction_loss(x_hat, x, t), by_hand)
    torch.testing.assert_close(x_prediction_loss(x_hat, x, t), data["loss.elementwise"].mean(), rtol=1e-5, atol=0)


def test_training_terms_use_one_forward_and_the_head_output():
    model = randomize(tiny(2))
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(4, 8, 4, 4, generator=g), torch.randn(4, 8, 4, 4, generator=g)
    t, y = torch.tensor([0.02, 0.3, 0.6, 0.9]), torch.tensor([0, 1, 2, 3])
    terms = flow_matching_terms(model, x, noise, t, y, guidance_head=True)
    assert len(calls) == 1
    x_t, target = interpolate(x, noise, t)
    v, x_hat = model(x_t, t, y, return_guidance=True)
    torch.testing.assert_close(terms["flow"], F.mse_loss(v, target))
    scale = t.clamp_min(0.05).view(-1, 1, 1, 1)
    torch.testing.assert_close(terms["guidance_head"], ((x - x_hat) / scale).pow(2).mean())


def test_head_reads_the_trunk_block_it_names():
    """x_hat_base depends on blocks 1..k only: changing block k+1 leaves it, and not the velocity, unchanged."""
    model = randomize(tiny(2))
    x, t, y = torch.randn(2, 8, 4, 4), torch.tensor([0.5, 0.7]), torch.tensor([0, 1])
    v, x_hat = model(x, t, y, return_guidance=True)
    with torch.no_grad():
        model.blocks[2].attn.proj.weight.mul_(3)
    v2, x_hat2 = model(x, t, y, return_guidance=True)
    assert torch.equal(x_hat, x_hat2) and not torch.allclose(v, v2)
    with torch.no_grad():
        model.blocks[1].attn.proj.weight.mul_(3)
    assert not torch.allclose(model(x, t, y, return_guidance=True)[1], x_hat)


@pytest.mark.parametrize("t", [0.05, 0.08, 0.3, 0.77, 1.0])
def test_scale_one_or_the_main_heads_prediction_gives_the_main_velocity(t):
    model = randomize(tiny(1))
    x, y = torch.randn(3, 8, 4, 4), torch.tensor([0, 1, 2])
    tb = torch.full((3,), t)
    v = model(x, tb, y)
    torch.testing.assert_close(guided_velocity(model, y, "free", 1.0)(x, tb, t), v, rtol=1e-5, atol=1e-5)

    class MainAsBase(torch.nn.Module):  # the head's prediction replaced by the main head's x_t - t v
        has_guidance_head = True

        def forward(self, x, tt, y, return_guidance=False):
            v = model(x, tt, y)
            return (v, x - tt.view(-1, 1, 1, 1) * v) if return_guidance else v

    torch.testing.assert_close(guided_velocity(MainAsBase(), y, "free", 2.5)(x, tb, t), v, rtol=1e-5, atol=1e-5)
    # a real head at scale 2.5 moves the velocity inside the interval
    assert not torch.allclose(guided_velocity(model, y, "free", 2.5)(x, tb, t), v, atol=1e-3)


def test_one_dit_forward_per_sampling_step():
    model = randomize(tiny(2))
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    cfg = SamplerConfig("euler", steps=6, shift=1.0)
    velocity = guided_velocity(model, torch.tensor([0, 1]), "free", 1.78, (0.1, 1.0))
    sample(velocity, torch.randn(2, 8, 4, 4), cfg)
    assert len(calls) == cfg.evaluations == 5


def test_without_a_head_the_network_is_unchanged():
    plain, with_head = tiny(None), tiny(2)
    extra = set(with_head.state_dict()) - set(plain.state_dict())
    assert set(plain.state_dict()) <= set(with_head.state_dict())
    assert extra == {f"guidance_head.{k}" for k in with_head.guidance_head.state_dict()}
    d, c = 64, 8  # DiTDH-tiny's trunk width, the latent channels: RMSNorm + adaLN (2 D) + Linear(D, C)
    assert with_head.parameter_count() - plain.parameter_count() == d + (d * 2 * d + 2 * d) + (d * c + c)
    missing = with_head.load_state_dict(randomize(plain).state_dict(), strict=False).missing_keys
    assert set(missing) == extra  # the plain network's weights are the shared part, key for key
    x, t, y = torch.randn(2, 8, 4, 4), torch.tensor([0.5, 0.7]), torch.tensor([0, 1])
    assert torch.equal(plain(x, t, y), with_head(x, t, y))
    assert "guidance_head" not in json.dumps(list(plain.state_dict()))
    with pytest.raises(ValueError, match="no free-guidance head"):
        plain(x, t, y, return_guidance=True)
    with pytest.raises(ValueError, match="guidance=free needs a DiT trained with a free-guidance head"):
        guided_velocity(plain, y, "free", 1.5)


@pytest.mark.parametrize("bad", [0, 4, True, "2"])
def test_bad_head_block_is_named(bad):
    with pytest.raises(ConfigError, match=r"dit.guidance_head_block=.* must be a trunk block in 1\.\.3"):
        tiny(bad)


def test_head_survives_save_and_load(tmp_path):
    model = randomize(tiny(2))
    model.save_pretrained(tmp_path / "dit")
    back = DiT.from_pretrained(tmp_path / "dit")
    x, t, y = torch.randn(2, 8, 4, 4), torch.tensor([0.5, 0.7]), torch.tensor([0, 1])
    for a, b in zip(model(x, t, y, return_guidance=True), back(x, t, y, return_guidance=True)):
        assert torch.equal(a, b)
