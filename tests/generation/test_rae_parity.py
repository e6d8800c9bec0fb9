"""drorae's DiT and samplers against RAE's own code: a fixture made by bytetriper/RAE (a4d18c4) itself.

``tests/fixtures/rae_stage2/make_fixture.py`` built tiny ``DiTwDDTHead`` / ``LightningDiT`` checkpoints with RAE's
classes, perturbed every weight (EMA != model), and stored RAE's outputs: forward passes, ``sample_ode`` with
``euler`` and ``heun2``, CFG and AutoGuidance as ``sample_ddp.py`` runs them. Here the checkpoints go through
``import_rae_dit`` and every output is reproduced to float32 rounding (RAE builds its RoPE tables in float32).
"""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from drorae.embeddings import sincos_pos_embed_2d
from drorae.generation import DiT, DiTConfig
from drorae.generation.flow import SamplerConfig, guided_velocity, sample, time_grid
from drorae.interop import import_rae_dit
from drorae.interop.rae_stage2 import _rename

FIXTURE = Path(__file__).parents[1] / "fixtures" / "rae_stage2"
META = json.loads((FIXTURE / "meta.json").read_text())
OUT = load_file(str(FIXTURE / "outputs.safetensors"))
ATOL = 2e-5  # float32 rounding; the five differences of the old network were >= 1e-2 here (see the sensitivity test)
HEADS = dict(num_heads=2, head_num_heads=2)


@pytest.fixture(scope="module")
def ddt():
    return import_rae_dit(FIXTURE / "ddt.pt", **HEADS)


@pytest.fixture(scope="module")
def guide():
    return import_rae_dit(FIXTURE / "guide.pt", **HEADS)


@pytest.fixture(scope="module")
def lightning():
    return import_rae_dit(FIXTURE / "lightning.pt", num_heads=2)


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


@torch.no_grad()
def test_forward_passes_equal_raes(ddt, guide, lightning):
    x, t, y = OUT["x"], OUT["t"], OUT["y"]
    _close(ddt(x, t, y), OUT["forward_ddt"])
    _close(guide(x, t, y), OUT["forward_guide"])
    _close(lightning(x, t, y), OUT["forward_lightning"])  # plain DiT = RAE's LightningDiT
    raw = import_rae_dit(FIXTURE / "ddt.pt", weights="model", **HEADS)
    _close(raw(x, t, y), OUT["forward_ddt_model"])
    assert (OUT["forward_ddt"] - OUT["forward_ddt_model"]).abs().max() > 0.1  # the EMA was taken, as RAE samples


def test_import_infers_raes_sizes(ddt, lightning):
    c = ddt.config
    d = META["ddt"]
    assert [c.hidden_size, c.head_hidden_size] == d["hidden_size"] and [c.depth, c.head_depth] == d["depth"]
    assert (c.in_channels, c.input_size, c.num_classes, c.frequency_size) == (8, 4, 10, 256)
    assert lightning.config.head_depth == 0 and lightning.config.depth == META["lightning"]["depth"]


def test_the_time_grid_is_raes():
    assert torch.equal(time_grid(META["euler_steps"], META["shift"]), OUT["grid_euler"])


@torch.no_grad()
def test_euler_and_heun_samples_equal_raes_sample_ode(ddt, lightning):
    z, y, s = OUT["z"], OUT["labels"], META["shift"]
    _close(sample(guided_velocity(ddt, y), z, SamplerConfig("euler", META["euler_steps"], s)), OUT["euler"])
    _close(sample(guided_velocity(ddt, y), z, SamplerConfig("heun", META["heun_steps"], s)), OUT["heun"])
    _close(
        sample(guided_velocity(lightning, y), z, SamplerConfig("euler", META["euler_steps"], s)),
        OUT["euler_lightning"],
    )


@torch.no_grad()
def test_cfg_and_autoguidance_samples_equal_raes(ddt, guide):
    z, y, s = OUT["z"], OUT["labels"], META["shift"]
    cfg, ag = META["cfg"], META["autoguidance"]
    got = sample(
        guided_velocity(ddt, y, "cfg", cfg["scale"], tuple(cfg["interval"]), null_class=ddt.null_class),
        z,
        SamplerConfig("euler", cfg["steps"], s),
    )
    _close(got, OUT["cfg"])
    got = sample(
        guided_velocity(ddt, y, "autoguidance", ag["scale"], tuple(ag["interval"]), guide=guide),
        z,
        SamplerConfig("euler", ag["steps"], s),
    )
    _close(got, OUT["autoguidance"])
    assert (OUT["cfg"] - OUT["euler"]).abs().max() > 0.1 and (OUT["autoguidance"] - OUT["euler"]).abs().max() > 0.1


def test_raes_initialisation_zeroes_the_same_tensors():
    """adaLN-Zero and the zero final layer as RAE's init leaves them; DiT^DH keeps PyTorch's default (non-zero)
    biases, plain DiT (LightningDiT) Xavier weights with zero biases."""
    for kind, cfg in (
        ("ddt", DiTConfig(hidden_size=32, depth=2, num_heads=2, head_hidden_size=48, head_depth=1, head_num_heads=2)),
        (
            "lightning",
            DiTConfig(hidden_size=32, depth=2, num_heads=2, head_hidden_size=0, head_depth=0, head_num_heads=0),
        ),
    ):
        cfg.in_channels, cfg.input_size, cfg.num_classes = 8, 4, 10
        torch.manual_seed(0)
        ours = {k for k, v in DiT(cfg).state_dict().items() if v.is_floating_point() and not v.any()}
        theirs = {_rename(k, kind == "ddt", cfg.depth) for k in META["zero_at_init"][kind]}
        assert ours == theirs, (kind, sorted(ours ^ theirs))
    fresh = DiT(DiTConfig(preset="DiTDH-tiny", in_channels=8, input_size=4, num_classes=3))
    w = fresh.blocks[0].attn.qkv.weight
    assert w.abs().max() <= 1 / math.sqrt(w.shape[1])  # PyTorch's default bound, not Xavier's larger one
    plain = DiT(DiTConfig(preset="DiT-tiny", in_channels=8, input_size=4, num_classes=3)).blocks[0].attn.qkv.weight
    assert plain.abs().max() > 1 / math.sqrt(plain.shape[1])  # Xavier: sqrt(6 / (fan_in + fan_out)) > 1/sqrt(fan_in)


@torch.no_grad()
def test_each_old_difference_breaks_the_match(ddt):
    """The fixture has the power to see each of the five differences the old network had."""
    x, t, y = OUT["x"], OUT["t"], OUT["y"]
    grid = ddt.config.grid_size
    row_first = sincos_pos_embed_2d(ddt.config.hidden_size, grid, cls_token=False)
    row_first = torch.cat([row_first[:, row_first.shape[1] // 2 :], row_first[:, : row_first.shape[1] // 2]], 1)
    saved = ddt.pos_embed.clone()
    ddt.pos_embed.copy_(row_first[None])
    assert (ddt(x, t, y) - OUT["forward_ddt"]).abs().max() > 1e-3  # row 2: transposed positions
    ddt.pos_embed.copy_(saved)
    silu = [b.adaLN_modulation[0] for b in ddt.blocks]
    for b in ddt.blocks:
        b.adaLN_modulation[0] = torch.nn.Identity()
    try:
        assert (ddt(x, t, y) - OUT["forward_ddt"]).abs().max() > 1e-3  # row 1: a bare Linear on the condition
    finally:
        for b, act in zip(ddt.blocks, silu):
            b.adaLN_modulation[0] = act
    old = SamplerConfig("euler", META["euler_steps"], META["shift"], "to-zero")  # what --steps 6 used to mean
    to_zero = sample(guided_velocity(ddt, OUT["labels"]), OUT["z"], old)
    assert (to_zero - OUT["euler"]).abs().max() > 1e-3  # row 5: 6 steps to t = 0, not RAE's 6 points
    _close(ddt(x, t, y), OUT["forward_ddt"])  # restored


def test_previous_drorae_dit_directories_are_refused_clearly(tmp_path):
    model = DiT(DiTConfig(preset="DiT-tiny", in_channels=8, input_size=4, num_classes=3))
    model.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    del raw["_dit_format"]  # what drorae 0.2 wrote
    raw["_drorae_version"] = "0.2.0"
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"drorae 0.2.0 in network format 1.*import-rae-dit"):
        DiT.from_pretrained(tmp_path)
