"""Bagel's sampler as options of sample-t2i (CFG renormalisation against Bagel's own code, the grid that ends at 0,
a sampling shift apart from the training one) and the MoT's time-scale option (what it changes, and only that)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from drorae.generation.flow import SamplerConfig, time_grid
from drorae.generation.text.mot import MoTConfig, MoTGenerator, patchify, unpatchify
from drorae.generation.text.sampling import cfg_velocity, guide

from .test_mot import IDS, build, captions

FIXTURE = Path(__file__).parents[1] / "fixtures" / "bagel_cfg"
META = json.loads((FIXTURE / "meta.json").read_text())


def test_the_fixture_records_bagels_commit():
    assert META["bagel_commit"].startswith("056b5fd") and len(META["bagel_commit"]) == 40


@pytest.mark.parametrize("case", sorted(META["cases"]))
def test_cfg_renormalisation_equals_bagels(case):
    """Bagel's _forward_flow on fixed velocities: tokens [16, 12] are a 4 x 4 latent of 3 channels in patches of 2."""
    ref, c = load_file(str(FIXTURE / "cfg.safetensors")), META["cases"][case]
    v_c, v_u = (unpatchify(ref[f"{case}.{k}"][None], 2, 3) for k in ("cond", "uncond"))
    got = guide(v_c, v_u, c["scale"], c["renorm_min"], c["renorm_type"], patch=2)
    torch.testing.assert_close(patchify(got, 2)[0], ref[f"{case}.out"], rtol=1e-6, atol=1e-6)


def test_global_renormalisation_is_per_image_in_a_batch():
    """Bagel samples one image per call; drorae's batch gives each image its own norm."""
    g = torch.Generator().manual_seed(0)
    v_c, v_u = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    v_u[1] *= 10  # one image whose guidance would blow up
    batched = guide(v_c, v_u, 4.0, 0.0, "global")
    one_by_one = torch.cat([guide(v_c[i : i + 1], v_u[i : i + 1], 4.0, 0.0, "global") for i in range(3)])
    torch.testing.assert_close(batched, one_by_one, rtol=0, atol=0)
    assert (batched.flatten(1).norm(dim=1) <= v_c.flatten(1).norm(dim=1) * (1 + 1e-6)).all()


def test_sample_t2i_applies_the_renormalisation():
    model = build()
    ids, lengths = captions()
    ids, lengths = ids[:2], lengths[:2]
    x_t, t = torch.randn(2, 8, 4, 4), torch.tensor([0.4, 0.4])
    context = model.encode_text(
        torch.cat([ids, torch.zeros_like(ids)]), torch.cat([lengths, torch.zeros_like(lengths)])
    )
    v_c = model(x_t, t, ids, lengths)
    v_u = model(x_t, t, ids, torch.zeros_like(lengths))
    v = cfg_velocity(model, context, 4.0, (0.0, 1.0), 0.0, "global")(x_t, t, 0.4)
    plain = v_u + 4.0 * (v_c - v_u)
    expected = (
        plain * (v_c.flatten(1).norm(dim=1) / (plain.flatten(1).norm(dim=1) + 1e-8)).clamp(0, 1)[:, None, None, None]
    )
    torch.testing.assert_close(v, expected, rtol=0, atol=5e-5)


def test_the_to_zero_grid_is_bagels():
    """Bagel: linspace(1, 0, 50) shifted by s t / (1 + (s - 1) t), Euler steps between consecutive points (49)."""
    shift, points = 3.0, 50
    bagel = torch.linspace(1, 0, points, dtype=torch.float64)
    bagel = shift * bagel / (1 + (shift - 1) * bagel)
    torch.testing.assert_close(time_grid(points - 1, shift, "to-zero"), bagel, rtol=0, atol=1e-7)
    assert SamplerConfig("euler", points - 1, shift, "to-zero").evaluations == 49


def test_time_scale_changes_exactly_the_embedders_input():
    torch.manual_seed(0)
    base = MoTConfig(preset="tiny", latent_channels=8, latent_size=4, token_ids=IDS)
    a = MoTGenerator(base).eval()
    b = MoTGenerator(MoTConfig(**{**base.__dict__, "time_scale": 1000.0})).eval()
    b.load_state_dict(a.state_dict())
    x, t = torch.randn(2, 8, 4, 4), torch.tensor([0.3, 0.9])
    torch.testing.assert_close(b.latent_tokens(x, t), a.latent_tokens(x, 1000.0 * t), rtol=0, atol=0)
    assert not torch.allclose(b.latent_tokens(x, t), a.latent_tokens(x, t))
    ids, lengths = captions()
    ids, lengths = ids[:2], lengths[:2]
    ctx = a.encode_text(ids, lengths)
    torch.testing.assert_close(b.forward_image(x, t, ctx), a.forward_image(x, 1000.0 * t, ctx), rtol=0, atol=0)


def test_sample_t2i_cli_takes_bagels_settings(tmp_path, monkeypatch):
    """The flags reach the sampler's settings (recorded in sampling_args.json by run_t2i_sampling)."""
    from drorae.cli import main
    from drorae.generation.text import sampling

    seen = {}

    def fake_run(model, tokenizer, prompts, out, *, per_prompt, settings, device):
        seen["settings"] = settings
        return None

    monkeypatch.setattr(sampling, "run_t2i_sampling", fake_run)
    args = ["sample-t2i", "--model", "m", "--tokenizer", "t", "--prompts", "p", "--out", str(tmp_path)]
    bagel = ["--scale", "4", "--shift", "3", "--grid", "to-zero", "--steps", "49", "--cfg-renorm-min", "0"]
    assert main([*args, *bagel, "--cfg-renorm-type", "channel"]) == 0
    s = seen["settings"]
    assert (s.scale, s.shift, s.grid, s.steps, s.renorm_min, s.renorm) == (4.0, 3.0, "to-zero", 49, 0.0, "channel")
